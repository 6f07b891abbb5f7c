"""Instruction counts of a bench module run under ``valgrind --tool=callgrind``.

Every micro benchmark (``micro_count``, ``micro_wakeup``, ``micro_datapath``,
``micro_idle``) runs itself as a child under callgrind at two sizes and reports the
difference, so set-up and handshakes cancel out.  The hash seed is fixed: set and dict
orders, and so the count, repeat exactly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile


def instructions(module: str, *args: str) -> int:
    """Instructions callgrind collected over ``python -m MODULE ARGS``."""
    with tempfile.NamedTemporaryFile(suffix=".cg") as out:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}",
               sys.executable, "-m", module, *args]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if m is None:
        raise RuntimeError(f"no count in callgrind's output: {proc.stderr[-500:]}")
    return int(m.group(1))

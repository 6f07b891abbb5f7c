"""The bench's process registry and CPU accounting (bench/procs.py): processes under
``timeout``, stopped by PID, and utime + stime summed over a process tree."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bench.procs import Processes, cpu_seconds, cpu_used, descendants, machine_busy

BUSY_CHILD = "import os, time\nos.fork()\nt = time.process_time()\n" \
             "while time.process_time() - t < 0.3: pass\ntime.sleep(30)\n"


def test_stop_ends_the_whole_tree_by_pid(tmp_path: Path) -> None:
    procs = Processes()
    proc = procs.start("busy", [sys.executable, "-c", BUSY_CHILD], limit=60,
                       log=tmp_path / "busy.log")
    tree: list[int] = []
    for _ in range(100):
        tree = descendants(proc.pid)
        if len(tree) >= 4:  # timeout, python, its fork
            break
        os.sched_yield()
    assert tree[0] == proc.pid and len(tree) >= 3
    procs.stop(proc, grace=5)
    assert not proc.alive()
    assert procs.procs == []
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in tree)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_cpu_of_a_tree_counts_every_process(tmp_path: Path) -> None:
    procs = Processes()
    proc = procs.start("busy", [sys.executable, "-c", BUSY_CHILD], limit=60,
                       log=tmp_path / "busy.log")
    try:
        # Both processes burn 0.3 s of CPU each, then sleep: wait (bounded) until the
        # tree shows both shares, whatever the machine's load.
        sample = cpu_seconds([proc.pid])
        deadline = time.monotonic() + 60
        while cpu_used({}, sample) < 0.55 and time.monotonic() < deadline:
            time.sleep(0.05)
            sample = cpu_seconds([proc.pid])
        assert cpu_used({}, sample) >= 0.55
        assert cpu_used(sample, sample) == 0
    finally:
        procs.stop_all()


def test_machine_busy_only_grows() -> None:
    a = machine_busy()
    assert machine_busy() >= a >= 0

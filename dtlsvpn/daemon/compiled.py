"""The optional compiled module, ``dtlsvpn.daemon._lane`` (``_lane.c``, ``_vnet.c``).

Built by the install when a C compiler and OpenSSL's headers are there (``setup.py``,
``optional=True``).  It holds the two compiled parts of the data path, each with a
pure-Python counterpart that passes the same tests:

- ``Lane``: the lone-packet lane (``daemon/lane.py``);
- ``segment``: ``vpn/vnet.segment`` in C, which lets the TUN offer TSO on read
  (``daemon/tun.py``); ``coalesce``: ``vpn/gro.coalesce`` in C, for its writes;
- ``Sealer``: ``FastSeal``'s batch loop in C (``DtlsConfig.record_sealer``,
  ``daemon/settings.py``).

``module`` is None when it is not built, or when the environment says
``DTLSVPN_COMPILED_LANE=off`` (as if not built: the tests' switch, and an operator's).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

module: Any
try:
    from dtlsvpn.daemon import _lane as module
except ImportError:  # not built (no compiler or OpenSSL headers): pure Python only
    module = None
if os.environ.get("DTLSVPN_COMPILED_LANE") == "off":
    module = None

segment: Callable[[bytes], list[bytes]] | None = None
coalesce: Callable[[list[bytes]], list[bytes]] | None = None
sealer: Callable[..., Any] | None = None
if module is not None:
    segment, coalesce, sealer = module.segment, module.coalesce, module.Sealer

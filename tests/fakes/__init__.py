"""In-memory devices for running the real daemon in plain pytest (no root, no namespaces).

The idea of wireguard-go's ``tun/tuntest`` and ``conn/bindtest``: the daemon is given
doubles of its I/O edges (``dtlsvpn.daemon.devices``) and everything above them is the
production code: the data path, the loop, dialling, events, reload, status.

- ``devices.py``: ``FakeTun`` (a SOCK_SEQPACKET socketpair: one packet per read, a real
  descriptor for the loop's epoll), ``FakeNet`` and its ``FakeUdp`` ports (datagrams
  between bound addresses, a path MTU that silently drops what is larger),
  ``FakeLink`` (the interface's MTU, addresses and routes), ``FakeNotifier`` (sd_notify
  messages recorded) and ``FakeDevices`` that hands them out.
- ``world.py``: ``World``, one fake clock and one ``FakeNet`` shared by several daemons
  in one process; ``run_until`` steps every daemon's loop with ``run_once(max_wait=0)``
  and jumps the clock to the next deadline whenever nothing is ready.
- ``packets.py``: minimal IPv4/IPv6 packets for the fake TUNs.
"""

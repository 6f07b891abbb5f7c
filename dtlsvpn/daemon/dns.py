"""``DNS = ...`` on a client: the tunnel's resolvers, set on start and restored on stop.

Two back-ends, the first the system has:

- systemd-resolved through ``resolvectl`` (its D-Bus interface's command line): per-link
  DNS servers on the TUN device (``resolvectl dns DEV SERVER...``) and its domains
  (``resolvectl domain DEV [~.] [SEARCH...]``: with a full tunnel ``~.`` makes the link
  the one every name is asked on, as wg-quick does).  Stop: ``resolvectl revert DEV``,
  which drops everything set on the link (the link itself goes away with the device).
- ``resolvconf`` (Debian's or openresolv): ``resolvconf -a DEV -m 0 -x`` with
  ``nameserver``/``search`` lines on stdin (metric 0, exclusive: these servers alone
  while the tunnel is up).  Stop: ``resolvconf -d DEV -f``.

``DNS`` entries that are IP addresses are servers, the others search domains (as in
wg-quick).  A command that fails is logged with its stderr, and the next back-end is
tried; neither available: one error line, the tunnel comes up without DNS changes.
Commands run with a timeout (start and stop only, never on the data path).
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence

log = logging.getLogger("dtlsvpn")

TIMEOUT = 10.0
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
Run = Callable[[Sequence[str], str | None], tuple[int, str]]


def run_command(argv: Sequence[str], stdin: str | None) -> tuple[int, str]:
    """Run ``argv`` (stdin text if any); (exit status, stderr).  127: not runnable.

    The command gets a session of its own: a stop signal sent to our process group (a
    supervisor forwarding SIGTERM, coreutils ``timeout`` sending it twice) must not kill
    the restore that the stop itself runs.  The stop signals are blocked while it is
    spawned: between the fork and its ``setsid`` the child is still in our group, and
    CPython's child resets the handlers to the default before that, so a group signal
    then killed it before it ran (48 of 5 949 spawns under a TERM every millisecond;
    none blocked).  The child execs with them blocked, so one that came in that window
    stays pending and harmless; the timeout's kill is SIGKILL.  Our own stays pending
    until the spawn returns, then the loop sees it as usual.
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as exc:
        return 127, str(exc)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        _, err = proc.communicate(stdin, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        return 127, str(exc)
    return proc.returncode, err.strip()


def split_entries(entries: Sequence[str]) -> tuple[list[str], list[str]]:
    """(servers, search domains) of a ``DNS`` list."""
    servers, domains = [], []
    for entry in entries:
        try:
            servers.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            domains.append(entry)
    return servers, domains


class Dns:
    """The tunnel's resolvers on one interface, and how to take them back."""

    def __init__(self, ifname: str, entries: Sequence[str], *, full_tunnel: bool,
                 run: Run = run_command,
                 which: Callable[[str], str | None] = shutil.which) -> None:
        self.ifname = ifname
        self.servers, self.domains = split_entries(entries)
        self.full_tunnel = full_tunnel
        self._run = run
        self._which = which
        self.backend: str | None = None

    def apply(self) -> str | None:
        """Set the resolvers; the back-end used ("resolvectl", "resolvconf") or None."""
        for name, apply in (("resolvectl", self._resolvectl), ("resolvconf", self._resolvconf)):
            if self._which(name) is None:
                continue
            if apply():
                self.backend = name
                log.info("DNS on %s through %s: %s%s", self.ifname, name,
                         ", ".join(self.servers) or "no servers",
                         f" (search {', '.join(self.domains)})" if self.domains else "")
                return name
        log.error("DNS = %s: neither resolvectl (systemd-resolved) nor resolvconf works "
                  "here; the tunnel's resolvers are not set",
                  ", ".join(self.servers + self.domains))
        return None

    def restore(self) -> None:
        backend, self.backend = self.backend, None
        if backend == "resolvectl":
            self._call(["resolvectl", "revert", self.ifname])
        elif backend == "resolvconf":
            self._call(["resolvconf", "-d", self.ifname, "-f"])

    def _call(self, argv: list[str], stdin: str | None = None) -> bool:
        status, err = self._run(argv, stdin)
        if status != 0:
            log.warning("%s: exit %d%s", " ".join(argv), status, f": {err}" if err else "")
        return status == 0

    def _resolvectl(self) -> bool:
        domains = (["~."] if self.full_tunnel else []) + self.domains
        if self.servers and not self._call(["resolvectl", "dns", self.ifname, *self.servers]):
            return False
        if domains and not self._call(["resolvectl", "domain", self.ifname, *domains]):
            self._call(["resolvectl", "revert", self.ifname])
            return False
        return True

    def _resolvconf(self) -> bool:
        lines = [f"nameserver {s}" for s in self.servers]
        if self.domains:
            lines.append("search " + " ".join(self.domains))
        return self._call(["resolvconf", "-a", self.ifname, "-m", "0", "-x"],
                          "\n".join(lines) + "\n")

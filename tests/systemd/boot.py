"""Boot a real systemd as PID 1 of private namespaces, run commands in it, power it off.

systemd is not PID 1 on the test machines, so the unit file is tested under a systemd of its
own (../shared/docs/systemd.md has the steps this follows):

1. a cgroup for the run under the cgroup2 mount (``/sys/fs/cgroup/unified`` on a hybrid
   host, ``/sys/fs/cgroup`` on a pure cgroup2 one); the starting shell moves into it;
2. ``timeout -k 5 LIFETIME unshare --pid --fork --kill-child --mount --cgroup --uts --ipc
   --net --propagation private sh INNER``: whatever happens, everything dies with it;
3. INNER (PID 1 of the namespaces) builds a root: an overlay with ``lowerdir=/`` and a tmpfs
   upper (the host's files are visible, writes go nowhere), ``/dev`` bound in, a host log
   file bound over ``dev/console`` (systemd's console output, kept for failure reports),
   fresh tmpfs on ``run`` and ``tmp``, the staged files copied in, the test target and the
   masks (units that would touch host-global state or are useless here) in
   ``run/systemd/system``;
4. ``pivot_root``, ``proc``, read-only ``sysfs``, ``cgroup2 -o nsdelegate``, then
   ``exec /lib/systemd/systemd --unit=dtlsvpn-test.target``;
5. commands run inside with ``nsenter`` into systemd's namespaces (found as the child of
   ``unshare``), after ``/run/systemd/private`` exists and ``is-system-running --wait``;
6. ``systemctl --no-block poweroff``; the processes started here are killed by PID if they
   are still alive after that, and the cgroups are removed depth-first.

Every command run inside is wrapped in ``timeout``; the whole instance lives at most
``lifetime`` seconds.  Nothing here sleeps for a fixed time: each wait polls a condition.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.util import KILL_AFTER, bounded, wait_until

SYSTEMD = "/lib/systemd/systemd"
TARGET = "dtlsvpn-test.target"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SRC_DIR = Path(__file__).resolve().parents[2]  # the repository, bound into the instance

TARGET_UNIT = """[Unit]
Description=dtlsvpn test target (basic system, nothing else)
Requires=basic.target
After=basic.target
AllowIsolate=yes
"""

# Units masked in the instance: they would act on host-global state (kernel tunables,
# modules, binfmt, swap, the clock, udev, the host's /tmp through tmpfiles) or wait for a
# network that a private namespace never has.
MASKED = (
    "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.service", "systemd-tmpfiles-clean.timer",
    "systemd-sysctl.service", "systemd-modules-load.service", "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-udev-settle.service",
    "systemd-random-seed.service", "systemd-timesyncd.service", "systemd-pstore.service",
    "kmod-static-nodes.service", "sys-kernel-config.mount", "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount", "dev-hugepages.mount",
    "systemd-repart.service", "systemd-firstboot.service", "systemd-hwdb-update.service",
    "systemd-journal-catalog-update.service", "ldconfig.service", "systemd-remount-fs.service",
    "systemd-networkd-wait-online.service", "NetworkManager-wait-online.service",
    "ifupdown-wait-online.service", "networking.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "man-db.timer",
)

INNER = r"""#!/bin/sh
# PID 1 of the new namespaces: build the root, pivot into it, exec systemd.
set -eu
work=$1
m=$work/mnt
mount --make-rprivate /
mount -t tmpfs -o mode=0755 dtlsvpn-test "$m"
mkdir "$m/upper" "$m/work" "$m/root"
mount -t overlay -o "lowerdir=/,upperdir=$m/upper,workdir=$m/work" overlay "$m/root"
r=$m/root
mount --rbind /dev "$r/dev"
mount --bind "$work/console.log" "$r/dev/console"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$r/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r/tmp"
cp -a "$work/stage/." "$r/"
# The source tree (for `make install`) wherever it is: under the fresh /tmp, or on a
# file system the overlay of / does not show.
if [ -n "${SRC_DIR:-}" ]; then mkdir -p "$r$SRC_DIR" && mount --bind "$SRC_DIR" "$r$SRC_DIR"; fi
mkdir -p "$r/run/systemd/system"
while read -r unit; do ln -s /dev/null "$r/run/systemd/system/$unit"; done < "$work/masked"
mkdir -p "$r/.oldroot"
cd "$r"
pivot_root . .oldroot
cd /
mount -t proc proc /proc
mount -t sysfs -o ro sysfs /sys
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
umount -l /.oldroot
rmdir /.oldroot
exec env -i container=dtlsvpn-test PATH="$PATH_INSIDE" "$SYSTEMD" --unit="$TARGET"
"""


class BootError(RuntimeError):
    """The instance did not come up; the message carries its console and logs."""


def cgroup2_root() -> Path:
    """The cgroup2 mount: /sys/fs/cgroup/unified on a hybrid host, else /sys/fs/cgroup."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    points = [Path(fields[1]) for fields in mounts if len(fields) > 2 and fields[2] == "cgroup2"]
    for wanted in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if wanted in points:
            return wanted
    raise BootError("no cgroup2 hierarchy mounted at /sys/fs/cgroup(/unified)")


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, comm) of the processes whose parent is ``pid`` (a scan of /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "PID (comm) STATE PPID ...": comm may contain spaces and parentheses.
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            found.append((int(entry.name), comm))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Instance:
    """One booted systemd.  ``files`` maps absolute paths inside to (content, mode)."""

    def __init__(self, workdir: Path, *, lifetime: float = 170.0,
                 files: Mapping[str, tuple[str | bytes, int]] | None = None) -> None:
        self.workdir = workdir
        self.lifetime = lifetime
        self.files = dict(files or {})
        self.cgroup: Path | None = None
        self.popen: subprocess.Popen[bytes] | None = None
        self.unshare_pid: int | None = None
        self.pid: int | None = None  # systemd's PID on the host
        self.console = workdir / "console.log"
        self.boot_state = ""  # what is-system-running answered: running or degraded

    # --- boot ------------------------------------------------------------------------

    def _stage(self) -> None:
        stage = self.workdir / "stage"
        self.files[f"/run/systemd/system/{TARGET}"] = (TARGET_UNIT, 0o644)
        for path, (content, mode) in self.files.items():
            target = stage / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            data = content.encode() if isinstance(content, str) else content
            target.write_bytes(data)
            target.chmod(mode)
        (self.workdir / "masked").write_text("".join(f"{u}\n" for u in MASKED))
        (self.workdir / "inner.sh").write_text(INNER)
        (self.workdir / "mnt").mkdir()
        self.console.touch()

    def boot(self, timeout: float = 60.0) -> None:
        """Start the instance; return once ``is-system-running --wait`` has answered."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stage()
        self.cgroup = cgroup2_root() / f"dtlsvpn-test.{os.getpid()}.{secrets.token_hex(3)}"
        self.cgroup.mkdir()
        script = (
            'echo $$ > "$1/cgroup.procs" && exec timeout -k 5 "$2" '
            "unshare --pid --fork --kill-child --mount --cgroup --uts --ipc --net "
            '--propagation private sh "$3/inner.sh" "$3"'
        )
        env = {"PATH": PATH, "PATH_INSIDE": PATH, "SYSTEMD": SYSTEMD, "TARGET": TARGET,
               "SRC_DIR": str(SRC_DIR)}
        with (self.workdir / "boot.log").open("wb") as log:
            self.popen = subprocess.Popen(
                ["sh", "-c", script, "sh", str(self.cgroup), f"{self.lifetime:g}",
                 str(self.workdir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + timeout
        self.unshare_pid = self._wait_child(self.popen.pid, "unshare", deadline)
        self.pid = self._wait_child(self.unshare_pid, "systemd", deadline)
        private = Path(f"/proc/{self.pid}/root/run/systemd/private")
        if not wait_until(lambda: private.exists() or not self.running, deadline - time.monotonic()):
            raise BootError(f"no /run/systemd/private\n{self.diagnostics()}")
        if not self.running:
            raise BootError(f"systemd exited during boot\n{self.diagnostics()}")
        res = self.run(["systemctl", "is-system-running", "--wait"],
                       timeout=max(deadline - time.monotonic(), 5))
        state = res.stdout.strip()
        if state not in ("running", "degraded"):
            raise BootError(f"is-system-running: {state!r} {res.stderr}\n{self.diagnostics()}")
        self.boot_state = state

    def _wait_child(self, parent: int, comm: str, deadline: float) -> int:
        found: list[int] = []

        def look() -> bool:
            found[:] = [pid for pid, name in _children(parent) if name == comm]
            return bool(found) or not self.running

        wait_until(look, deadline - time.monotonic())
        if not found:
            raise BootError(f"no {comm} process under PID {parent}\n{self.diagnostics()}")
        return found[0]

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    # --- commands inside --------------------------------------------------------------

    def command(self, argv: Sequence[str], *, netns: str | None = None, host_net: bool = False,
                env: Mapping[str, str] | None = None, timeout: float = 30.0) -> list[str]:
        """``argv`` as run inside the instance (under ``timeout``), for Popen.

        ``netns``: inside the named namespace (``ip netns exec``) of the instance.
        ``host_net``: in the instance's mount, PID and other namespaces but the host's
        network (for ``pip``), with the caller's environment; otherwise ``env -i``.
        """
        assert self.pid is not None, "not booted"
        spaces = ["-m", "-p", "-u", "-i", "-C"] + ([] if host_net else ["-n"])
        inner = list(argv)
        if netns is not None:
            inner = ["ip", "netns", "exec", netns, *inner]
        if not host_net:
            extra = [f"{k}={v}" for k, v in (env or {}).items()]
            inner = ["env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", *extra, *inner]
        return bounded(["nsenter", "-t", str(self.pid), *spaces, "--", *inner], timeout)

    def run(self, argv: Sequence[str], *, timeout: float = 30.0, check: bool = False,
            **kw: object) -> subprocess.CompletedProcess[str]:
        full = self.command(argv, timeout=timeout, **kw)  # type: ignore[arg-type]
        res = subprocess.run(full, capture_output=True, text=True, check=False,
                             timeout=timeout + KILL_AFTER + 5)
        if check and res.returncode != 0:
            raise AssertionError(
                f"inside: {shlex.join(argv)} -> {res.returncode}\n{res.stdout}{res.stderr}")
        return res

    def sh(self, script: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], **kw)  # type: ignore[arg-type]

    def systemctl(self, *args: str, timeout: float = 60.0,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", *args], timeout=timeout, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        res = self.systemctl("show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)

    def active_state(self, unit: str) -> str:
        return self.systemctl("is-active", unit, check=False).stdout.strip()

    def wait_active_state(self, unit: str, wanted: str, timeout: float) -> bool:
        return wait_until(lambda: self.active_state(unit) == wanted, timeout, interval=0.1)

    def path(self, inside: str) -> Path:
        """A path inside the instance, as seen from the host (through /proc/PID/root)."""
        return Path(f"/proc/{self.pid}/root{inside}")

    def journal(self, *units: str, lines: int = 80) -> str:
        args = ["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines)]
        for unit in units:
            args += ["-u", unit]
        res = self.run(args, timeout=20)
        return res.stdout + res.stderr

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str,
             *units: str) -> None:
        """Poll ``predicate``; fail with the units' journal when it stays false."""
        if not wait_until(predicate, timeout, interval=0.1):
            raise AssertionError(f"timed out after {timeout:g}s: {what}\n{self.journal(*units)}")

    def diagnostics(self) -> str:
        boot = (self.workdir / "boot.log").read_text(errors="replace")[-3000:]
        console = self.console.read_text(errors="replace")[-5000:]
        return f"[boot]\n{boot}\n[console]\n{console}"

    # --- shutdown ---------------------------------------------------------------------

    def poweroff(self, timeout: float = 30.0) -> None:
        """Power the instance off; kill what this object started if it does not stop."""
        if self.popen is None:
            return
        if self.running and self.pid is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.run(["systemctl", "--no-block", "poweroff"], timeout=10)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            # unshare --kill-child takes PID 1 of the namespaces (and so all of them) along.
            for pid in (self.unshare_pid, self.popen.pid):
                if pid is not None and _alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self.popen.wait(10)
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        if self.cgroup is None or not self.cgroup.exists():
            return

        def leftover() -> bool:
            for sub, _dirs, _files in os.walk(self.cgroup, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(sub)
            return not self.cgroup.exists()

        # The kernel frees a cgroup a moment after its last process has gone.
        if not wait_until(leftover, 10, interval=0.1):
            raise BootError(f"cgroup {self.cgroup} could not be removed")

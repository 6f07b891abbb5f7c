"""Optional coverage-guided fuzzing with atheris (``pip install atheris``; ``make fuzz-atheris``).

``python -m tests.fuzz.atheris_target [libFuzzer flags, e.g. -atheris_runs=200000]``.
The first byte of each input picks the target, the rest is one datagram:

* 0: a fresh ``ServerEndpoint`` (the stateless gate: ClientHello parsing, cookies);
* 1: a server association waiting for the client's key exchange (PSK mode);
* 2: an established PSK association, server side (with connection IDs);
* 3: a client waiting for the server's flight 4.

The states are rebuilt for every input from a deterministic PSK handshake, so an input
means the same thing every time.  Any exception is a crash for libFuzzer.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["dtlsvpn"]):
    from dtlsvpn.dtls import Association, ServerEndpoint
    from tests.sim.clock import FakeClock
    from tests.sim.configs import configs_for

ADDR = ("198.18.0.2", 40001)


def _pair(stop: int) -> tuple[Association, ServerEndpoint, FakeClock]:
    """A PSK client and server after ``stop`` deliveries of a clean handshake."""
    c_cfg, s_cfg = configs_for("psk-aes128", None, seed=1)  # type: ignore[arg-type]
    clock = FakeClock()
    client, ep = Association(c_cfg), ServerEndpoint(s_cfg)
    client.connect(clock.now, clock.wall)
    pending = [("c2s", d) for d in client.datagrams_to_send(clock.now)]
    while pending and stop > 0:
        stop -= 1
        direction, d = pending.pop(0)
        if direction == "c2s":
            assoc, out = ep.receive(d, ADDR, clock.now, clock.wall)
            out = out if assoc is None else assoc.datagrams_to_send(clock.now)
            pending += [("s2c", r) for r in out]
        else:
            client.receive_datagram(d, clock.now, clock.wall)
            pending += [("c2s", r) for r in client.datagrams_to_send(clock.now)]
    return client, ep, clock


def test_one_input(data: bytes) -> None:
    if not data:
        return
    which, datagram = data[0] % 4, data[1:]
    if which == 0:
        _c, ep, clock = _pair(0)
        ep.receive(datagram, ADDR, clock.now, clock.wall)
    elif which in (1, 2):
        _c, ep, clock = _pair(3 if which == 1 else 20)
        assoc, _out = ep.receive(datagram, ADDR, clock.now, clock.wall)
        if assoc is not None:
            assoc.datagrams_to_send(clock.now)
    else:
        client, _ep, clock = _pair(2)
        client.receive_datagram(datagram, clock.now, clock.wall)
        client.datagrams_to_send(clock.now)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

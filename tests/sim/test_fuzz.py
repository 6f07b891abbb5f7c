"""Remote input never raises: arbitrary and mutated datagrams at every stage.

A real handshake is recorded once per mode (every datagram each side sent, in
order) as material.  For each example a fresh client and server endpoint run a
live handshake cut off after a number of deliveries, which leaves them in some
state, and then both get garbage or recorded datagrams with bytes flipped, cut
or spliced.  Whatever arrives, the
core must return normally (drops are counted, alerts are sent), and an
association that is established must still carry data afterwards unless it was
closed by an alert it had to send (RFC 6347 §4.1.2.7: invalid records are
dropped silently).
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtlsvpn.dtls import Association, ServerEndpoint
from tests.pki import Pki
from tests.sim.configs import configs_for

ADDR = ("198.18.0.2", 40001)
MODES = ["ecdhe-ecdsa-aes128", "ecdhe-psk-chacha", "mutual-ecdsa"]


@functools.cache
def _recording(mode: str, pki_dir: str, pki: Pki) -> tuple[tuple[str, bytes], ...]:
    """One clean handshake's datagrams in ``mode`` (and a data record)."""
    wall = pki.now.timestamp()  # the sim PKI is valid at its own date
    cfg_c, cfg_s = configs_for(mode, pki, seed=7, pmtu=None)
    client, endpoint = Association(cfg_c), ServerEndpoint(cfg_s)
    log: list[tuple[str, bytes]] = []
    client.connect(0.0, wall)
    for _ in range(12):
        for d in client.datagrams_to_send(0.0):
            log.append(("c2s", d))
            assoc, out = endpoint.receive(d, ADDR, 0.0, wall)
            replies = out if assoc is None else assoc.datagrams_to_send(0.0)
            for r in replies:
                log.append(("s2c", r))
                client.receive_datagram(r, 0.0, wall)
    assert client.is_established, mode
    log.append(("c2s", client.protect([b"data from the client"])[0]))
    return tuple(log)


def _mutate(data: bytes, how: int, pos: int, value: int, cut: int) -> bytes:
    if not data:
        return bytes([value])
    pos %= len(data)
    if how == 0:  # flip one byte
        return data[:pos] + bytes([data[pos] ^ (value or 1)]) + data[pos + 1:]
    if how == 1:  # truncate
        return data[:pos]
    if how == 2:  # duplicate a tail
        return data + data[pos:pos + cut]
    if how == 3:  # overwrite a run (lengths, epochs, sequence numbers live in headers)
        return data[:pos] + bytes([value]) * cut + data[pos + cut:]
    return data[pos:] + data[:pos]  # rotate


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.integers(min_value=0, max_value=14),
    picks=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 4), st.integers(0, 10_000),
                             st.integers(0, 255), st.integers(0, 40)), max_size=6),
    garbage=st.lists(st.binary(max_size=300), max_size=3),
)
def test_no_datagram_makes_the_core_raise(
    pki: Pki, mode: str, prefix: int, picks: list[tuple[int, int, int, int, int]],
    garbage: list[bytes],
) -> None:
    log = _recording(mode, str(pki.directory), pki)
    wall = pki.now.timestamp()
    cfg_c, cfg_s = configs_for(mode, pki, seed=prefix, pmtu=None)  # fresh, reproducible
    client, endpoint = Association(cfg_c), ServerEndpoint(cfg_s)
    client.connect(0.0, wall)
    now = 0.0
    # A live handshake between these two, cut off after ``prefix`` deliveries: the
    # hostile datagrams then arrive in whatever state that left.
    budget = prefix
    pending = [("c2s", d) for d in client.datagrams_to_send(now)]
    while pending and budget > 0:
        direction, d = pending.pop(0)
        budget -= 1
        if direction == "c2s":
            assoc, out = endpoint.receive(d, ADDR, now, wall)
            replies = out if assoc is None else assoc.datagrams_to_send(now)
            pending += [("s2c", r) for r in replies]
        else:
            client.receive_datagram(d, now, wall)
            pending += [("c2s", r) for r in client.datagrams_to_send(now)]
    hostile = [*garbage]
    for index, how, pos, value, cut in picks:
        hostile.append(_mutate(log[index % len(log)][1], how, pos, value, cut))
    for i, d in enumerate(hostile):
        now += 0.01
        # Both sides get everything: client-bound bytes at the server too, and the reverse.
        assoc, _out = endpoint.receive(d, ADDR, now, wall)
        if assoc is not None:
            assoc.datagrams_to_send(now)
        client.receive_datagram(d, now, wall)
        client.datagrams_to_send(now)
        if i % 2:
            now += 1.5
            client.handle_timer(now)
            endpoint.handle_timer(now)
        client.pop_events()
    # An established pair that was not closed still works: data flows both ways.
    server = endpoint.associations.get(ADDR)
    if (client.is_established and server is not None and server.is_established
            and not client.is_closed and not server.is_closed
            and server.client_random == client.client_random):
        (record,) = client.protect([b"after the storm"])
        assert endpoint.receive(record, ADDR, now, wall)[1] == [b"after the storm"]
        (back,) = server.protect([b"and back"])
        assert client.receive_datagram(back, now, wall) == [b"and back"]


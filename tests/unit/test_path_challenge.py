"""The path challenge of an RFC 9146 move (``Keepalive.challenge``, ``Association``'s
``challenge_path`` / ``take_path_challenge`` / ``challenge_answered``), on a real pair.

What is asserted: the challenge is a HeartbeatRequest the peer answers like any other;
it is handed out once, with the one address it is for, and never through
``datagrams_to_send`` (the shell sends those wherever the peer is now); an answer from
the peer sets ``challenge_answered``, a stale or foreign payload does not; while it is
outstanding it holds RFC 6520 §3's one request slot (the keepalive that falls due
waits), and when it expires unanswered the keepalive goes out.
"""

from __future__ import annotations

from bench.micro_core import CLIENT_ADDR, WALL, established_pair
from dtlsvpn.dtls.association import Association
from dtlsvpn.wire.constants import HeartbeatMessageType
from dtlsvpn.wire.heartbeat import decode_heartbeat, encode_heartbeat

CANDIDATE = ("192.0.2.8", 4242)


def _in_use() -> tuple[Association, Association]:
    client, endpoint, server = established_pair(True)
    endpoint.receive(client.protect([b"x"])[0], CLIENT_ADDR, 1.0, WALL)
    client.receive_datagram(server.protect([b"y"])[0], 1.0, WALL)
    server.datagrams_to_send(1.0)
    client.datagrams_to_send(1.0)
    return client, server


def _answer(client: Association, record: bytes, now: float) -> list[bytes]:
    assert client.receive_datagram(record, now, WALL) == []
    return client.datagrams_to_send(now)


def test_challenge_goes_to_its_address_once_and_is_answered() -> None:
    client, server = _in_use()
    assert server.challenge_path(CANDIDATE, 1.0)
    assert server.needs_service and server.datagrams_to_send(1.0) == []
    taken = server.take_path_challenge()
    assert taken is not None and taken[1] == CANDIDATE
    assert server.take_path_challenge() is None
    assert server.path_candidate == (CANDIDATE, 1.0)
    assert server.stats.path_challenges == 1 and not server.challenge_answered
    (answer,) = _answer(client, taken[0], 1.01)
    assert client.stats.heartbeat_answered == 1
    server.receive_datagram(answer, 1.02, WALL)
    assert server.challenge_answered
    assert server.stats.heartbeat_unexpected == 0


def test_replaced_challenge_answer_counts_for_nothing() -> None:
    client, server = _in_use()
    assert server.challenge_path(CANDIDATE, 1.0)
    first = server.take_path_challenge()
    assert server.challenge_path(("192.0.2.9", 1), 1.3)
    second = server.take_path_challenge()
    assert first is not None and second is not None and first[0] != second[0]
    (answer,) = _answer(client, first[0], 1.31)
    server.receive_datagram(answer, 1.32, WALL)
    assert not server.challenge_answered
    assert server.stats.heartbeat_unexpected == 1
    (answer,) = _answer(client, second[0], 1.33)
    server.receive_datagram(answer, 1.34, WALL)
    assert server.challenge_answered


def test_payloads_are_fresh_and_unlike_the_keepalive() -> None:
    _client, server = _in_use()
    keepalive = server._keepalive
    assert keepalive is not None
    messages = [keepalive.challenge(1.0 + i) for i in range(4)]
    payloads = {decode_heartbeat(m).payload for m in messages if m is not None}
    assert len(payloads) == 4
    assert all(decode_heartbeat(m).type == HeartbeatMessageType.heartbeat_request
               for m in messages if m is not None)
    # A response with a payload we never sent does not answer the challenge.
    bogus = encode_heartbeat(HeartbeatMessageType.heartbeat_response, bytes(16), bytes(16))
    assert not keepalive.receive(bogus, 5.0) and not keepalive.challenge_answered


def _requests_sent(server: Association) -> int:
    return server.stats.heartbeats_sent + server.stats.probes_sent


def test_challenge_holds_the_request_slot_until_it_expires() -> None:
    _client, server = _in_use()
    quiet = _requests_sent(server)
    # With nothing heard, the server's keepalive falls due within the idle interval and
    # its deferral (at most 2 × 2 s after the last record at t = 1).
    later = 1.0 + 4.0
    assert server.challenge_path(CANDIDATE, later - 0.5)
    server.take_path_challenge()
    timer = server.get_timer()
    assert timer is not None and timer <= later + 0.5  # the slot frees at +1 s
    server.handle_timer(later)
    assert _requests_sent(server) == quiet, "a request went out beside the challenge"
    assert server.datagrams_to_send(later) == []
    server.handle_timer(later + 0.6)  # the challenge expired unanswered
    assert _requests_sent(server) == quiet + 1
    assert len(server.datagrams_to_send(later + 0.6)) == 1


def test_no_challenge_without_heartbeat_requests() -> None:
    _client, server = _in_use()
    server._keepalive = None  # as before the handshake completes, or without RFC 6520
    assert not server.challenge_path(CANDIDATE, 1.0)
    assert server.take_path_challenge() is None and server.path_candidate is None

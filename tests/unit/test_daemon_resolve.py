"""The Endpoint lookup off the loop (daemon/resolve.py) on a real Loop and real threads."""

from __future__ import annotations

import socket
import threading

from dtlsvpn.daemon.loop import Loop
from dtlsvpn.daemon.resolve import Answer, Resolver, is_literal, lookup_all

V4 = (socket.AF_INET, ("198.18.0.1", 4433))
V6 = (socket.AF_INET6, ("2001:db8::1", 4433))


def test_a_slow_lookup_does_not_hold_the_loop() -> None:
    loop = Loop()
    release = threading.Event()
    answers: list[Answer] = []
    order: list[str] = []

    def slow(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
        release.wait(10)
        return [V6, V4]

    resolver = Resolver(loop, slow)
    resolver.resolve("office.test", 4433, lambda a, now: (answers.append(a), order.append("answer")))
    timer = loop.timer(lambda now, wall: (order.append("timer"), release.set()))
    timer.schedule(loop.now + 0.01)  # runs while the lookup still blocks its thread
    for _ in range(200):
        loop.run_once(max_wait=0.05)
        if answers:
            break
    assert order == ["timer", "answer"] and answers == [[V6, V4]]
    assert not resolver.pending and resolver.lookups == 1
    resolver.close()
    loop.close()


def test_a_stale_answer_is_dropped_and_errors_are_answers() -> None:
    loop = Loop()
    got: list[tuple[str, Answer]] = []
    release = threading.Event()

    def lookup(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
        if host == "slow.test":
            release.wait(10)
            return [V4]
        raise socket.gaierror(socket.EAI_NONAME, "unknown")

    resolver = Resolver(loop, lookup)
    resolver.resolve("slow.test", 4433, lambda a, now: got.append(("slow", a)))
    resolver.resolve("bad.test", 4433, lambda a, now: got.append(("bad", a)))
    for _ in range(100):
        loop.run_once(max_wait=0.05)
        if got:
            break
    release.set()
    for _ in range(10):
        loop.run_once(max_wait=0.05)
    assert len(got) == 1 and got[0][0] == "bad" and isinstance(got[0][1], socket.gaierror)
    resolver.close()
    loop.close()


def test_literals_need_no_thread_and_lookup_all_dedups() -> None:
    loop = Loop()
    calls: list[str] = []
    resolver = Resolver(loop, lambda h, p: (calls.append(threading.current_thread().name)
                                            or [V4]))
    got: list[Answer] = []
    resolver.resolve("198.18.0.1", 4433, lambda a, now: got.append(a))
    assert got == []  # deferred to the end of the iteration, never re-entrant
    loop.run_once(max_wait=0)
    assert got == [[V4]] and calls == [threading.current_thread().name]
    assert is_literal("2001:db8::1") and not is_literal("office.test")
    assert lookup_all("198.18.0.1", 4433) == [V4]
    resolver.close()
    resolver.close()  # twice is fine
    loop.close()

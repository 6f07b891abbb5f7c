"""The event loop's deadline heap, deferred callbacks and fake-clock stepping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dtlsvpn.daemon.loop import Loop


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_loop() -> tuple[Loop, FakeClock]:
    clock = FakeClock()
    return Loop(clock=clock, wall_clock=lambda: 1_700_000_000.0 + clock.t), clock


def test_timers_fire_in_deadline_order_once() -> None:
    loop, clock = make_loop()
    fired: list[str] = []
    a = loop.timer(lambda now, wall: fired.append("a"))
    b = loop.timer(lambda now, wall: fired.append("b"))
    a.schedule(102.0)
    b.schedule(101.0)
    assert loop.next_deadline() == 101.0
    clock.t = 103.0
    loop.run_once(max_wait=0)
    assert fired == ["b", "a"]
    assert a.when is None and b.when is None
    loop.run_once(max_wait=0)
    assert fired == ["b", "a"]
    loop.close()


def test_reschedule_and_cancel_invalidate_old_entries() -> None:
    loop, clock = make_loop()
    fired: list[float] = []
    t = loop.timer(lambda now, wall: fired.append(now))
    t.schedule(101.0)
    t.schedule(105.0)  # the 101 entry is now stale
    clock.t = 102.0
    loop.run_once(max_wait=0)
    assert fired == []
    assert loop.next_deadline() == 105.0
    t.cancel()
    assert loop.next_deadline() is None
    clock.t = 106.0
    loop.run_once(max_wait=0)
    assert fired == []
    t.schedule(float("inf"))  # infinity means "no deadline"
    assert loop.next_deadline() is None
    loop.close()


def test_same_deadline_pushes_nothing() -> None:
    loop, _ = make_loop()
    t = loop.timer(lambda now, wall: None)
    for _ in range(1000):
        t.schedule(200.0)
    assert len(loop._heap) == 1
    loop.close()


def test_a_timer_may_reschedule_itself_from_its_callback() -> None:
    loop, clock = make_loop()
    fired: list[float] = []

    def tick(now: float, wall: float) -> None:
        fired.append(now)
        t.schedule(now + 1.0)

    t = loop.timer(tick)
    t.schedule(100.5)
    for step in (101.0, 101.2, 102.0, 103.0):
        clock.t = step
        loop.run_once(max_wait=0)
    assert fired == [101.0, 102.0, 103.0]
    loop.close()


def test_deferred_callbacks_run_once_after_the_handlers() -> None:
    loop, _ = make_loop()
    order: list[str] = []
    r, w = os.pipe2(os.O_NONBLOCK)

    def flush(now: float, wall: float) -> None:
        order.append("flush")

    def on_readable(mask: int, now: float, wall: float) -> None:
        os.read(r, 100)
        order.append("read")
        loop.defer(flush)
        loop.defer(flush)

    loop.add(r, on_readable)
    os.write(w, b"x")
    loop.run_once(max_wait=0)
    assert order == ["read", "flush"]
    loop.run_once(max_wait=0)
    assert order == ["read", "flush"]
    loop.remove(r)
    os.close(r)
    os.close(w)
    loop.close()


def test_run_once_says_how_much_ran() -> None:
    loop, clock = make_loop()
    assert loop.run_once(max_wait=0) == 0
    t = loop.timer(lambda now, wall: loop.defer(lambda n, w: None))
    t.schedule(100.5)
    assert loop.run_once(max_wait=0) == 0  # not due yet
    clock.t = 101.0
    assert loop.run_once(max_wait=0) == 2  # the timer and what it deferred
    loop.close()


def test_the_poll_waits_for_the_earliest_live_timer_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loop, clock = make_loop()
    waits: list[float] = []
    poll = loop._poll

    def recorded(timeout: float) -> list[tuple[int, int]]:
        waits.append(timeout)
        return poll(0)

    monkeypatch.setattr(loop, "_poll", recorded)
    a = loop.timer(lambda now, wall: None)
    b = loop.timer(lambda now, wall: None)
    a.schedule(100.25)
    b.schedule(103.0)
    a.schedule(105.0)  # its entry at 100.25 is stale now, and still the heap's top
    assert loop.run_once() == 0
    assert waits[-1] == pytest.approx(3.0)
    loop.run_once(max_wait=0.5)
    assert waits[-1] == 0.5  # capped
    clock.t = 104.0  # b is overdue: no negative wait
    loop.refresh_clock()
    assert loop.run_once(max_wait=2.0) == 1 and waits[-1] == 0.0
    a.cancel()
    loop.run_once(max_wait=2.0)
    assert waits[-1] == 2.0  # no timer left: only the cap
    loop.close()


def test_bring_forward_only_moves_a_deadline_sooner() -> None:
    loop, _ = make_loop()
    t = loop.timer(lambda now, wall: None)
    t.bring_forward(None)
    assert t.when is None
    t.bring_forward(105.0)
    t.bring_forward(107.0)  # later: the sooner deadline stays, nothing is pushed
    assert t.when == 105.0 and len(loop._heap) == 1
    t.bring_forward(102.0)
    assert t.when == 102.0 and loop.next_deadline() == 102.0
    loop.close()


def test_an_fd_epoll_refuses_leaves_no_handler(tmp_path: Path) -> None:
    loop, _ = make_loop()
    path = tmp_path / "regular"
    path.write_bytes(b"x")
    with open(path, "rb") as f:
        with pytest.raises(PermissionError):  # epoll refuses regular files
            loop.add(f.fileno(), lambda mask, now, wall: None)
        assert f.fileno() not in loop._handlers
    loop.close()


def test_close_can_leave_default_signals_ignored_in_one_step() -> None:
    import signal

    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        loop, _ = make_loop()
        loop.install_signals()
        loop.close(ignore_late_signals=True)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # was the default
        assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # Python's own: restored
    finally:
        signal.signal(signal.SIGTERM, before)


def _faulty_loop(contain: bool) -> tuple[Loop, FakeClock, list[str], int, int]:
    """A loop whose fd handler, timer and deferred callback each raise once."""
    clock = FakeClock()
    loop = Loop(clock=clock, wall_clock=lambda: clock.t, contain=contain)
    ran: list[str] = []
    r, w = os.pipe2(os.O_NONBLOCK)

    def later(now: float, wall: float) -> None:
        ran.append("deferred")
        raise KeyError("deferred")

    def on_readable(mask: int, now: float, wall: float) -> None:
        os.read(r, 100)
        ran.append("read")
        loop.defer(later)
        raise AttributeError("read")

    def on_timer(now: float, wall: float) -> None:
        ran.append("timer")
        raise ValueError("timer")

    loop.add(r, on_readable)
    loop.timer(on_timer).schedule(100.0)
    loop.timer(lambda now, wall: ran.append("next timer")).schedule(100.0)
    os.write(w, b"x")
    return loop, clock, ran, r, w


def test_without_contain_a_handlers_exception_propagates() -> None:
    loop, _, ran, r, w = _faulty_loop(contain=False)
    with pytest.raises(AttributeError):
        loop.run_once(max_wait=0)
    assert ran == ["read"] and loop.errors == 0
    loop.close()
    os.close(r)
    os.close(w)


def test_contained_errors_are_counted_logged_sparingly_and_the_loop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    loop, clock, ran, r, w = _faulty_loop(contain=True)
    counted: list[int] = []
    loop.on_error = lambda: counted.append(loop.errors)
    loop.run_once(max_wait=0)
    assert ran == ["read", "timer", "next timer", "deferred"]  # each still ran
    assert loop.errors == 3 and counted == [1, 2, 3]
    reports = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(reports) == 1 and reports[0].exc_info is not None  # then at most 1 a minute
    assert "on_readable" in reports[0].getMessage()
    clock.t += 61.0
    os.write(w, b"y")
    loop.run_once(max_wait=0)
    reports = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert loop.errors == 5 and len(reports) == 2
    assert "2 more since the last report" in reports[1].getMessage()
    loop.close()
    os.close(r)
    os.close(w)

"""The compute queue: slots, arrival order, visible positions, re-entry, interruption."""

from __future__ import annotations

import threading
import time

import pytest

from core.queue import ComputeQueue, QueueState, waiting_reporter


def test_one_slot_serves_in_arrival_order_and_reports_positions():
    q = ComputeQueue(1, poll=0.01)
    order: list[int] = []
    seen: dict[int, list[int]] = {i: [] for i in range(4)}
    release = threading.Event()

    def holder():
        with q.slot():
            order.append(0)
            release.wait(5)

    def waiter(i: int):
        with waiting_reporter(lambda s: seen[i].append(s.position)), q.slot():
            order.append(i)

    t0 = threading.Thread(target=holder)
    t0.start()
    while q.running == 0:
        time.sleep(0.001)
    threads = []
    for i in (1, 2, 3):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        while q.waiting < i:  # arrivals in a known order
            time.sleep(0.001)
    time.sleep(0.05)
    release.set()
    for t in [t0, *threads]:
        t.join(5)
    assert order == [0, 1, 2, 3]
    for i in (1, 2, 3):
        assert seen[i][0] == i  # first report: i-th in line
        assert seen[i][-1] == 0  # last report: the wait is over
        assert seen[i][:-1] == sorted(seen[i][:-1], reverse=True)  # only moves forward
    assert q.served == 4 and q.running == 0 and q.waiting == 0


def test_slots_bound_concurrency():
    q = ComputeQueue(2, poll=0.01)
    now = peak = 0
    lock = threading.Lock()

    def work():
        nonlocal now, peak
        with q.slot():
            with lock:
                now += 1
                peak = max(peak, now)
            time.sleep(0.02)
            with lock:
                now -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak == 2 and q.served == 8


def test_reentry_keeps_the_slot():
    q = ComputeQueue(1, poll=0.01)
    with q.slot(), q.slot():
        assert q.running == 1
    assert q.running == 0


def test_interrupted_waiter_leaves_the_queue():
    q = ComputeQueue(1, poll=0.01)
    release = threading.Event()

    def holder():
        with q.slot():
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    while q.running == 0:
        time.sleep(0.001)

    class Left(Exception):
        pass

    def leave(state: QueueState):
        raise Left  # as Streamlit does when the user leaves the page

    with pytest.raises(Left), waiting_reporter(leave), q.slot():
        pass
    assert q.waiting == 0
    release.set()
    t.join(5)
    with q.slot():  # the queue still works
        assert q.running == 1


def test_bad_slot_counts():
    with pytest.raises(ValueError, match="at least one slot"):
        ComputeQueue(0)
    with pytest.raises(ValueError, match="at least one slot"):
        ComputeQueue(1).set_slots(0)

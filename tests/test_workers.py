"""pipeline/data/workers.py: ordered results, errors named, workers always reaped (even on SIGINT)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

from pipeline.data.workers import WorkerError, ordered_map


def _children() -> set[int]:
    return {p.pid for p in mp.active_children()}


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize("n, chunk", [(0, 4), (1, 4), (10, 4), (97, 5), (64, 32)])
def test_results_come_in_index_order_for_any_worker_count(workers: int, n: int, chunk: int) -> None:
    with ordered_map(lambda i: (i, os.getpid()), n, workers, chunk) as results:
        got = list(results)
    assert [i for i, _ in got] == list(range(n))
    pids = {pid for _, pid in got}
    if workers > 1 and n > chunk:
        assert os.getpid() not in pids and len(pids) == min(workers, -(-n // chunk))
    else:
        assert pids <= {os.getpid()}
    assert not _children()


def _raises_at_13(i: int) -> int:
    if i == 13:
        raise ValueError("bad item thirteen")
    return i


def _dies_at_9(i: int) -> int:
    if i == 9:
        os._exit(3)
    return i


@pytest.mark.parametrize(
    "fn, message",
    [
        (_raises_at_13, r"(?s)failed on items 12\.\.15.*ValueError: bad item thirteen"),
        (_dies_at_9, r"died \(exit code 3\) before sending items 8\.\.11"),
    ],
)
def test_a_worker_that_raises_or_dies_is_reported_naming_the_items(fn, message: str) -> None:  # noqa: ANN001
    with pytest.raises(WorkerError, match=message), ordered_map(fn, 40, 2, chunk=4) as results:
        list(results)
    assert not _children()


def test_leaving_early_stops_and_reaps_the_workers() -> None:
    with ordered_map(lambda i: i, 10_000, 2, chunk=8) as results:
        pids = _children()
        assert len(pids) == 2
        assert next(iter(results)) == 0
    assert not _children()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_stalled_consumer_bounds_what_the_workers_compute_ahead() -> None:
    done = mp.get_context("fork").Value("i", 0)

    def fn(i: int) -> bytes:
        with done.get_lock():
            done.value += 1
        return bytes(200_000)  # more than a pipe buffer: each send waits for the reader

    with ordered_map(fn, 1000, 2, chunk=1) as results:
        next(iter(results))
        time.sleep(1.0)
        ahead = done.value
    # per worker: the one being sent, the one computed after it, plus the first read
    assert ahead <= 2 * 3 + 1, ahead


def test_sigint_while_waiting_raises_keyboardinterrupt_and_leaves_no_worker() -> None:
    def fn(i: int) -> int:
        time.sleep(30 if i >= 4 else 0)
        return i

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), ordered_map(fn, 100, 2, chunk=2) as results:  # noqa: PT012
            timer.start()
            assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
            list(results)  # blocks on items 4..: the interrupt lands here
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - start < 10
    assert not _children()


def test_chunk_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk must be >= 1"), ordered_map(lambda i: i, 3, 2, chunk=0):
        pass

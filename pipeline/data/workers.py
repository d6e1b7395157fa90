"""`ordered_map`: `fn(i)` for i in range(n), computed in forked worker processes, yielded in order.

The data stages (shard, dedup, validate) fan work out to every core. `multiprocessing.Pool` did
that until an interrupt landed inside its bookkeeping: its terminate then waits on handler threads
and on locks it shares with the workers, and a SIGINT at the wrong moment left the shard stage hung
for good instead of cleaning up (CI: killed after 60 s). This is the smaller machine we need, with
nothing shared to deadlock on:

- worker `w` of `W` computes chunks `w, w + W, w + 2W, …` of `chunk` indices each and sends each
  chunk's results down its own pipe; the parent reads chunk `k` from worker `k % W`, so the output is
  in index order and does not depend on `W`;
- a worker blocks on its pipe until the parent reads, so what is in flight per worker is bounded by
  the pipe's buffer (64 KiB on Linux) plus the chunk it is sending and the one it computes: memory
  does not grow with `n`;
- the workers are forked: `fn` and the data it reads are inherited, nothing is pickled on the way in;
- however the parent leaves (consumer done, an exception, KeyboardInterrupt), the workers are
  SIGKILLed and reaped before `ordered_map` returns; a worker ignores SIGINT (a terminal's Ctrl-C
  reaches the whole group, the parent decides), and a worker's exception or death is raised in the
  parent naming the worker and the chunk.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import TypeVar

T = TypeVar("T")


class WorkerError(RuntimeError):
    """A worker raised or died; the message names the worker, the chunk and the cause."""


def _serve(fn: Callable[[int], T], n: int, chunk: int, worker: int, workers: int, out: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for k in range(worker, -(-n // chunk), workers):
        lo = k * chunk
        try:
            msg = ("ok", [fn(i) for i in range(lo, min(lo + chunk, n))])
        except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
            msg = ("error", traceback.format_exc())
        try:
            out.send(msg)
        except (BrokenPipeError, EOFError):  # the parent is gone: nobody to report to
            return
        if msg[0] == "error":
            return


@contextmanager
def ordered_map(fn: Callable[[int], T], n: int, workers: int, chunk: int = 32) -> Iterator[Iterator[T]]:
    """`with ordered_map(fn, n, workers) as results: for r in results: …` — `fn(0) … fn(n-1)` in order.

    `workers <= 1` (or a single chunk) runs in this process. Leaving the block stops the workers,
    whether or not every result was read.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    chunks = -(-n // chunk)
    workers = min(workers, chunks)
    if workers <= 1:
        yield (fn(i) for i in range(n))
        return
    ctx = mp.get_context("fork")
    procs: list[mp.process.BaseProcess] = []
    pipes: list[Connection] = []
    try:
        for w in range(workers):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_serve, args=(fn, n, chunk, w, workers, writer), daemon=True,
                               name=f"ordered_map-{w}")  # fmt: skip
            proc.start()
            writer.close()  # the worker holds the only writing end: its exit is our EOF
            procs.append(proc)
            pipes.append(reader)
        yield _collect(pipes, procs, chunks, chunk)
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.join()
        for pipe in pipes:
            pipe.close()


def _collect(pipes: list[Connection], procs: list, chunks: int, chunk: int) -> Iterator:
    for k in range(chunks):
        w = k % len(pipes)
        try:
            status, payload = pipes[w].recv()
        except EOFError:
            procs[w].join(timeout=5)
            raise WorkerError(f"worker {w} died (exit code {procs[w].exitcode}) before sending items "
                              f"{k * chunk}..{(k + 1) * chunk - 1}") from None  # fmt: skip
        if status == "error":
            raise WorkerError(f"worker {w} failed on items {k * chunk}..{(k + 1) * chunk - 1}:\n{payload}")
        yield from payload

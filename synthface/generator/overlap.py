"""Overlap of a run's stages: the sampler renders batch k+1 while a worker thread selects (filters),
encodes and writes batch k.

The stage after sampling (per batch: collect the candidates, filter each identity whose candidates
are complete, encode the kept images; per shard: write the Parquet file and its commit marker) is
handed to a :class:`Stage`. :class:`Inline` runs each task at once, in the caller; :class:`Worker`
runs them in one background thread, in the order they were submitted, so both run the same
functions in the same order and write the same bytes. Its queue is bounded (``depth`` tasks): the
sampler is never more than that many tasks ahead, so memory stays flat.

Errors: a task's exception stops the worker (later tasks are dropped) and is raised in the caller
by its next :meth:`Stage.submit` or by :meth:`Stage.close`. When the caller fails or is
interrupted (Ctrl-C, or SIGTERM where the CLI turns it into an interrupt), leaving the ``with``
block cancels the tasks not yet started and waits for the one in progress; a shard is either
committed (Parquet + marker, both written atomically) or not at all, so a resumed run renders
exactly the shards that are missing. The worker is a daemon thread, so even a process killed while
it waits cannot hang on it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

DEPTH = 2  # tasks queued ahead of the worker (one batch being sampled, two waiting, one being written)
_STOP = object()


class Stage:
    """Runs the tasks after sampling (see the module docstring); a context manager."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Wait until every submitted task has run; raise the first task's error."""

    def cancel(self) -> None:
        """Drop the tasks not yet started and wait for the one in progress."""

    def __enter__(self) -> "Stage":
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.cancel()


class Inline(Stage):
    """Every task runs at once, in the caller (``sampling.overlap: false``)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)


class Worker(Stage):
    """Tasks run in one background thread, in submission order, at most ``depth`` queued."""

    def __init__(self, depth: int = DEPTH) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, int(depth)))
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._work, name="synthface-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None or self._cancelled.is_set():
                continue  # drain: nothing after a failure or a cancel runs
            fn, args = item
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._cancelled.set()
            raise error

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise()
        if not self._thread.is_alive():
            raise RuntimeError("the writer thread has stopped")
        while True:
            try:
                self._queue.put((fn, args), timeout=0.1)
                return
            except queue.Full:
                self._raise()  # the worker failed while the queue was full: stop waiting for it

    def _stop(self) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()

    def close(self) -> None:
        self._stop()
        self._raise()

    def cancel(self) -> None:
        self._cancelled.set()
        while True:  # free the queue at once (the worker would skip these anyway)
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._stop()


def make_stage(overlap: bool, depth: int = DEPTH) -> Stage:
    """:class:`Worker` when ``overlap``, else :class:`Inline`."""
    return Worker(depth) if overlap else Inline()

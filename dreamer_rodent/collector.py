"""The collector: env steps taken in a background thread while the learner trains.

The training loop alternates two costs that need not wait for each other: the
env step (MuJoCo physics, which releases the GIL) and the agent update (one
XLA call, which releases it too). With `run.collect_ahead` N > 0 the loop
hands `collect` (policy + one step of every env) to this thread, which keeps up
to N finished results queued; the loop takes them in order and does everything
else exactly as before: each transition enters the replay and the updates due
by the train ratio run before the next one is taken, so the ratio stays exact.
The price is bounded staleness: the policy that chose an action may be up to
N + 1 collector steps (that many times `run.envs` env steps) older than the one
being trained.

The thread owns the envs while it runs; the loop borrows them (curriculum
states, videos, a checkpoint, an undone update) inside `paused()`, and
`close()` ends the thread before the envs are saved or closed.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any, Callable


class CollectorError(RuntimeError):
    """The collector thread is gone without an error of its own (it was closed)."""


class Collector:
    """Runs `collect()` over and over in a thread, at most `ahead` results in advance of `next()`."""

    def __init__(self, collect: Callable[[], Any], ahead: int, name: str = "collector"):
        if ahead < 1:
            raise ValueError(f"collect_ahead is {ahead}: use >= 1 (0 collects in the loop's own thread).")
        self._collect = collect
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._state = threading.Condition()
        self._busy = False    # a collect() is running: the envs are in use
        self._want = False    # the loop asks for the envs: no new collect() starts
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                with self._state:
                    while self._want and not self._stop:
                        self._state.wait()
                    if self._stop:
                        return
                    self._busy = True
                try:
                    item = self._collect()
                finally:
                    with self._state:
                        self._busy = False
                        self._state.notify_all()
                while True:
                    with self._state:
                        if self._stop:
                            return
                    try:
                        self._queue.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # noqa: BLE001 - handed to the loop's thread by next()
            self._error = error

    def next(self, timeout: float | None = None) -> Any:
        """The oldest collected result. Once the queued ones are taken, a failure of `collect` is raised here, in
        the caller's thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
            if not self._thread.is_alive() and self._queue.empty():
                if self._error is not None:
                    raise self._error  # as if the loop's own step had raised it (an env worker's failure, ...)
                raise CollectorError("the env collector thread has stopped")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("no collected step within the timeout")

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @contextlib.contextmanager
    def paused(self):
        """The envs to the caller: waits for the step in flight, and no new one starts until the block ends."""
        with self._state:
            self._want = True
            while self._busy:
                self._state.wait()
        try:
            yield
        finally:
            with self._state:
                self._want = False
                self._state.notify_all()

    def close(self) -> None:
        """Stops the thread once its step in flight is done (also from inside `paused()`) and waits for it, so
        that nobody else uses the envs afterwards; queued results are dropped (a resume resets the envs)."""
        with self._state:
            self._stop = True
            self._state.notify_all()
        self._thread.join()
        while not self._queue.empty():
            self._queue.get_nowait()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

"""Training output a researcher reads: metrics.jsonl, TensorBoard, videos, a progress bar.

`metrics.jsonl` is the durable record (one JSON object per write, with `step`),
readable without TensorBoard; TensorBoard (through tensorboardX) gets the same
scalars plus videos. Videos are encoded as animated GIF image summaries (what
TensorBoard shows; tensorboardX's own add_video needs moviepy, which we do not
depend on) and also saved as MP4 under `videos/`.
"""

from __future__ import annotations

import collections
import datetime
import errno
import io
import json
import math
import os
import pathlib
import sys
import threading
import time
import warnings
from typing import Mapping

import numpy as np


class Averages:
    """Accumulates values between writes; `result()` gives the mean of each and resets."""

    def __init__(self):
        self._sums: dict[str, float] = collections.defaultdict(float)
        self._counts: dict[str, int] = collections.defaultdict(int)

    def add(self, metrics: Mapping[str, float], prefix: str = "") -> None:
        for key, value in metrics.items():
            value = np.asarray(value)
            if value.size != 1 or not np.issubdtype(value.dtype, np.number) and value.dtype != bool:
                continue
            value = float(value.reshape(()))
            if math.isfinite(value):
                self._sums[prefix + key] += value
                self._counts[prefix + key] += 1

    def result(self) -> dict[str, float]:
        out = {k: self._sums[k] / self._counts[k] for k in self._sums if self._counts[k]}
        self._sums.clear()
        self._counts.clear()
        return out


def _gif(frames: np.ndarray, fps: float) -> bytes:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    stream = io.BytesIO()
    images[0].save(stream, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, int(1000 / fps)), loop=0)
    return stream.getvalue()


def video_grid(frames: np.ndarray) -> np.ndarray:
    """[T,H,W,C] or [B,T,H,W,C] (uint8 or float in [0,1]) -> uint8 [T,H,B*W,3]."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)
    if frames.ndim == 4:
        frames = frames[None]
    if frames.ndim != 5:
        raise ValueError(f"a video needs shape [T,H,W,C] or [B,T,H,W,C], got {frames.shape}.")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, -1)
    b, t, h, w, c = frames.shape
    return frames.transpose(1, 2, 0, 3, 4).reshape(t, h, b * w, c)


class Logger:
    """Writes scalars to metrics.jsonl and TensorBoard, videos to TensorBoard and videos/."""

    def __init__(self, logdir, tensorboard: bool = True, fps: float = 25, process_index: int = 0):
        self.logdir = pathlib.Path(logdir)
        self.fps = float(fps)
        self.enabled = process_index == 0  # one writer per multi-host run
        self._jsonl = None
        self._writer = None
        if not self.enabled:
            return
        self._jsonl = open(self.logdir / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(str(self.logdir), flush_secs=30)
            except BaseException:  # no half-made logger: the caller never gets it to close
                self._jsonl.close()
                raise
            _quiet_when_disk_full(self._writer)

    def scalars(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        clean = {}
        for key, value in sorted(metrics.items()):
            value = float(value)
            clean[key] = value if math.isfinite(value) else str(value)  # JSON has no NaN
        self._jsonl.write(json.dumps({"step": int(step), "time": round(time.time(), 3), **clean}) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                if math.isfinite(float(value)):  # metrics.jsonl keeps the "nan"/"inf" record
                    self._writer.add_scalar(key, float(value), int(step))

    def video(self, step: int, name: str, frames: np.ndarray) -> None:
        """Logs a video ([T,H,W,C] or [B,T,H,W,C]; batch entries side by side)."""
        if not self.enabled:
            return
        grid = video_grid(frames)
        if grid.shape[1] < 64:  # tiny debug images are unreadable at 1:1
            factor = int(math.ceil(64 / grid.shape[1]))
            grid = grid.repeat(factor, 1).repeat(factor, 2)
        if self._writer is not None:
            from tensorboardX.proto.summary_pb2 import Summary

            image = Summary.Image(height=grid.shape[1], width=grid.shape[2], colorspace=3,
                                  encoded_image_string=_gif(grid, self.fps))
            summary = Summary(value=[Summary.Value(tag=name, image=image)])
            self._writer._get_file_writer().add_summary(summary, int(step))
        try:
            from dreamer_rodent.video import write_video

            folder = self.logdir / "videos"
            folder.mkdir(exist_ok=True)
            write_video(folder / f"{name.replace('/', '_')}_{int(step):09d}.mp4", list(grid), self.fps)
        except Exception as error:  # noqa: BLE001 - a video must never stop training
            warnings.warn(f"could not write the MP4 of {name}: {error}", stacklevel=2)

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Closes both writers even if the first fails (a full disk), then raises its error."""
        failed = None
        for name in ("_jsonl", "_writer"):
            writer, _ = getattr(self, name), setattr(self, name, None)
            if writer is not None:
                try:
                    writer.close()
                except OSError as error:
                    failed = failed or error
        if failed is not None:
            raise failed


def _quiet_when_disk_full(writer) -> None:
    """Drops TensorBoard writes that fail for a full disk instead of raising them.

    tensorboardX writes from its own thread and again at interpreter exit, so on a
    full disk each would print a traceback after the run's one `error:` line (the
    run stops on its own write of metrics.jsonl or a checkpoint). Other errors still raise.
    """
    events = getattr(getattr(writer._get_file_writer(), "event_writer", None), "_ev_writer", None)
    if events is None:  # another tensorboardX layout: keep its behaviour
        return
    for name in ("write_event", "flush", "close"):
        def guarded(*args, _method=getattr(events, name), **kwargs):
            try:
                return _method(*args, **kwargs)
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                return False
        setattr(events, name, guarded)


class Phase:
    """A long silent step (building envs, compiling) announced: a line when it starts, one every `every`
    seconds while it lasts, and its duration when it ends, so a terminal never sits blank for minutes.

    `watch(what or None)` is told when the phase starts and ends (the trainer's signal handling uses it).
    """

    def __init__(self, what: str, say=print, every: float = 30.0, watch=None, done: str | None = None):
        self.what, self.say, self.every, self.watch = what, say, float(every), watch
        self.done = done or what
        self._done = threading.Event()
        self._start = 0.0

    def __enter__(self):
        self._start = time.monotonic()
        if self.watch is not None:  # before the line: whoever reacts to the line finds the phase set
            self.watch(self.what)
        self.say(f"{self.what}...")
        if self.every > 0:
            threading.Thread(target=self._heartbeat, daemon=True, name="phase-heartbeat").start()
        return self

    def _heartbeat(self):
        while not self._done.wait(self.every):
            self.say(f"  still {self.what[0].lower()}{self.what[1:]} ({time.monotonic() - self._start:.0f} s)")

    def __exit__(self, kind, error, tb):
        self._done.set()
        if self.watch is not None:
            self.watch(None)
        if kind is None:
            self.say(f"{self.done}: done in {time.monotonic() - self._start:.1f} s.")
        return False


class Progress:
    """A tqdm bar over env steps with fps, recent return, success rate and ETA.

    When stderr is not a terminal (batch jobs, `docker logs`, a redirected
    nohup) a bar would fill the log with carriage returns, so a plain status
    line is printed every `plain_every` seconds instead. `enabled=False`
    silences both; metrics.jsonl has the same numbers.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, plain_every: float = 60.0):
        self._bar = None
        self._plain = enabled and not sys.stderr.isatty()
        self._plain_every = float(plain_every)
        self._total = int(total)
        self._start = (time.monotonic(), int(initial))
        self._last_plain = time.monotonic()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            try:
                size = os.get_terminal_size(sys.stderr.fileno())
            except OSError:
                size = os.terminal_size((0, 0))
            # Some pseudo-terminals report a 0x0 size, and tqdm then prints nothing at all.
            sized = size.columns >= 40 and size.lines > 0
            self._bar = tqdm(total=int(total), initial=int(initial), unit="step", dynamic_ncols=sized,
                             ncols=None if sized else 110, nrows=None if sized else 24, smoothing=0.05,
                             desc="train", mininterval=1.0)
        self._step = int(initial)

    def update(self, step: int, **info) -> None:
        if self._bar is None:
            if self._plain and time.monotonic() - self._last_plain >= self._plain_every:
                self._last_plain = time.monotonic()
                print(self._status(int(step), info), flush=True)
            return
        self._bar.update(max(0, int(step) - self._step))
        self._step = int(step)
        if info:
            self._bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in info.items()},
                                  refresh=False)

    def _status(self, step: int, info: dict) -> str:
        """`step 1200/3000 (40%) | 61.2 steps/s | ETA 0:00:29 | return 3.1 ...` for plain logs."""
        elapsed = time.monotonic() - self._start[0]
        fps = (step - self._start[1]) / elapsed if elapsed > 0 else 0.0
        eta = (self._total - step) / fps if fps > 0 else float("nan")
        eta_text = str(datetime.timedelta(seconds=int(eta))) if eta == eta else "?"
        parts = [f"step {step}/{self._total} ({100.0 * step / max(self._total, 1):.0f}%)",
                 f"{fps:.1f} steps/s", f"ETA {eta_text}"]
        parts += [f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()]
        return " | ".join(parts)

    def write(self, text: str) -> None:
        """Prints a line without breaking the bar."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

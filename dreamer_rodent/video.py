"""Frames for people: composition, text overlay and MP4 writing.

Evaluation and training summaries turn observations into video here, so every
video of the project has the same layout (third-person view, egocentric inset in
a corner, numbers in the top-left) and plays in ordinary players (H.264 with
yuv420p, which needs even frame sizes).
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


class VideoError(ValueError):
    """A frame or video request that cannot be written, with the fix in the message."""


def even(n: int) -> int:
    """The next even number >= n (H.264 in yuv420p needs even widths and heights)."""
    n = int(n)
    return n + (n % 2)


def parse_size(text: str) -> tuple[int, int]:
    """`'640x480'` -> (width, height), both made even."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise VideoError(f"video size '{text}' is not WIDTHxHEIGHT (for example 640x480).") from None
    if width < 16 or height < 16:
        raise VideoError(f"video size '{text}' is too small: use at least 16x16.")
    return even(width), even(height)


def make_even(frame: np.ndarray) -> np.ndarray:
    """Pads an odd height or width by repeating the last row or column."""
    frame = _check_frame(frame)
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor: keeps the agent's pixels visible as pixels."""
    factor = int(factor)
    if factor < 1:
        raise VideoError(f"upscale factor must be >= 1, got {factor}.")
    image = _check_frame(image)
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def add_inset(
    frame: np.ndarray,
    inset: np.ndarray,
    corner: str = "top-right",
    fraction: float = 0.3,
    border: int = 2,
    margin: int = 6,
    border_color: Sequence[int] = (255, 255, 255),
) -> np.ndarray:
    """Places `inset` (e.g. the egocentric image) in a corner of `frame`.

    The inset is upscaled by the largest integer factor that keeps its height at
    most `fraction` of the frame's, framed by a `border`-pixel border, `margin`
    pixels from the edges. Returns a new frame; the input is not modified.
    """
    if corner not in CORNERS:
        raise VideoError(f"unknown inset corner '{corner}': use one of {', '.join(CORNERS)}.")
    frame = _check_frame(frame).copy()
    inset = _check_frame(inset)
    height, width = frame.shape[:2]
    limit_h = max(1, int(height * fraction)) - 2 * border
    limit_w = width - 2 * (border + margin)
    factor = max(1, min(limit_h // inset.shape[0], limit_w // inset.shape[1]))
    inset = upscale(inset, factor)
    boxed = np.empty((inset.shape[0] + 2 * border, inset.shape[1] + 2 * border, 3), np.uint8)
    boxed[...] = np.asarray(border_color, np.uint8)
    boxed[border : border + inset.shape[0], border : border + inset.shape[1]] = inset
    bh, bw = boxed.shape[:2]
    if bh + 2 * margin > height or bw + 2 * margin > width:
        raise VideoError(
            f"inset of {inset.shape[1]}x{inset.shape[0]} does not fit a {width}x{height} frame: use a larger video size."
        )
    y = margin if corner.startswith("top") else height - margin - bh
    x = margin if corner.endswith("left") else width - margin - bw
    frame[y : y + bh, x : x + bw] = boxed
    return frame


@functools.lru_cache(maxsize=16)
def font(size: int) -> ImageFont.ImageFont:
    """PIL's bundled scalable font (no system fonts needed on a bare GPU node)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_text(
    frame: np.ndarray,
    lines: Iterable[str],
    corner: str = "top-left",
    size: int | None = None,
    margin: int = 6,
    color: Sequence[int] = (255, 255, 255),
    shade: float = 0.45,
) -> np.ndarray:
    """Writes lines of text in a corner over a darkened box, readable on any background.

    `size` is the font height in pixels (default: scaled to the frame height).
    Returns a new frame; the input is not modified.
    """
    if corner not in CORNERS:
        raise VideoError(f"unknown text corner '{corner}': use one of {', '.join(CORNERS)}.")
    frame = _check_frame(frame)
    lines = [str(line) for line in lines]
    if not lines:
        return frame.copy()
    height, width = frame.shape[:2]
    size = size or max(9, min(22, height // 24))
    typeface = font(size)
    line_h = size + max(2, size // 4)
    text_w = max(int(np.ceil(typeface.getlength(line))) for line in lines)
    box_w = min(width, text_w + 2 * margin)
    box_h = min(height, line_h * len(lines) + margin)
    x0 = 0 if corner.endswith("left") else width - box_w
    y0 = 0 if corner.startswith("top") else height - box_h
    out = frame.copy()
    region = out[y0 : y0 + box_h, x0 : x0 + box_w]
    region[...] = (region.astype(np.float32) * shade).astype(np.uint8)
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((x0 + margin, y0 + margin // 2 + i * line_h), line, font=typeface, fill=tuple(int(c) for c in color))
    return np.asarray(image)


def label_columns(frame: np.ndarray, labels: Sequence[str], size: int | None = None) -> np.ndarray:
    """Adds a header strip naming equal-width columns (e.g. truth | prediction | error)."""
    frame = _check_frame(frame)
    height, width = frame.shape[:2]
    size = size or max(9, min(18, width // (8 * max(1, len(labels)))))
    strip_h = even(size + 8)
    strip = np.zeros((strip_h, width, 3), np.uint8)
    image = Image.fromarray(strip)
    draw = ImageDraw.Draw(image)
    typeface = font(size)
    col_w = width / max(1, len(labels))
    for i, label in enumerate(labels):
        text_w = typeface.getlength(label)
        draw.text((i * col_w + max(0.0, (col_w - text_w) / 2), 3), label, font=typeface, fill=(255, 255, 255))
    return np.concatenate([np.asarray(image), frame], axis=0)


def stack_rows(videos: np.ndarray, gap: int = 2) -> np.ndarray:
    """[B, T, H, W, C] -> [T, B*H + gaps, W, C]: several sequences shown one above the other."""
    videos = np.asarray(videos)
    if videos.ndim != 5:
        raise VideoError(f"expected videos of shape [B, T, H, W, C], got {videos.shape}.")
    b, t, h, w, c = videos.shape
    rows = []
    for i in range(b):
        rows.append(videos[i])
        if i + 1 < b and gap:
            rows.append(np.zeros((t, gap, w, c), videos.dtype))
    return np.concatenate(rows, axis=1)


def fork_safe_ffmpeg() -> None:
    """Makes imageio-ffmpeg start ffmpeg without running Python between fork and exec.

    imageio-ffmpeg keeps Ctrl-C away from ffmpeg with `preexec_fn=os.setpgrp`; a
    preexec_fn makes subprocess fork and run Python code in the child, which in a
    process with JAX's threads can deadlock (JAX warns "os.fork() was called").
    `process_group=0` (Python 3.11+; `start_new_session` before) puts ffmpeg in
    its own process group in C between fork and exec, so Ctrl-C still does not
    reach it. Idempotent; a no-op if imageio-ffmpeg changes its internals.
    """
    try:
        from imageio_ffmpeg import _io
    except ImportError:
        return
    original = getattr(_io, "_popen_kwargs", None)
    if original is None or getattr(original, "fork_safe", False):
        return

    def popen_kwargs(*args, **kwargs):
        options = dict(original(*args, **kwargs))
        if options.get("preexec_fn") is getattr(os, "setpgrp", object()):
            options["preexec_fn"] = None
            if sys.version_info >= (3, 11):
                options["process_group"] = 0
            else:
                options["start_new_session"] = True
        return options

    popen_kwargs.fork_safe = True
    _io._popen_kwargs = popen_kwargs


class VideoWriter:
    """Appends frames to an H.264 MP4 through imageio-ffmpeg.

    Odd frame sizes are padded to even ones; every frame must have the size of
    the first, since a video cannot change size midway. Use as a context manager
    so the file is finalized even when evaluation fails part-way.
    """

    def __init__(self, path, fps: float, quality: int = 8):
        import imageio.v2 as imageio

        fork_safe_ffmpeg()

        if not fps or fps <= 0:
            raise VideoError(f"video fps must be positive, got {fps}.")
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = float(fps)
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (height, width) after padding
        self._writer = imageio.get_writer(
            str(self.path),
            format="FFMPEG",
            fps=self.fps,
            codec="libx264",
            pixelformat="yuv420p",
            quality=quality,
            macro_block_size=1,  # we pad to even ourselves; the default 16 would rescale frames
            ffmpeg_log_level="error",
        )

    def append(self, frame: np.ndarray) -> None:
        frame = make_even(frame)
        if self.size is None:
            self.size = frame.shape[:2]
        elif frame.shape[:2] != self.size:
            raise VideoError(
                f"frame {self.frames} of {self.path} is {frame.shape[1]}x{frame.shape[0]} but the video is "
                f"{self.size[1]}x{self.size[0]}: every frame of one video must have the same size."
            )
        self._writer.append_data(frame)  # the first frame starts ffmpeg (see fork_safe_ffmpeg)
        self.frames += 1

    def extend(self, frames: Iterable[np.ndarray]) -> None:
        for frame in frames:
            self.append(frame)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def write_video(path, frames: Iterable[np.ndarray], fps: float) -> int:
    """Writes frames to an MP4 and returns how many were written."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise VideoError(f"no frames to write to {path}.")
    with VideoWriter(path, fps) as writer:
        writer.append(first)
        writer.extend(frames)
        return writer.frames


def _check_frame(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    if frame.ndim != 3 or frame.shape[-1] not in (1, 3, 4):
        raise VideoError(f"expected an image of shape [H, W, 3], got {frame.shape}.")
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    elif frame.shape[-1] == 4:
        frame = frame[..., :3]
    if frame.dtype != np.uint8:
        if np.issubdtype(frame.dtype, np.floating):
            frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
        else:
            frame = np.clip(frame, 0, 255).astype(np.uint8)
    return frame

"""What the eval's frames show: the numbers over the third-person view, the egocentric inset, and the
world model's open-loop "dream" frames (truth, prediction, error)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dreamer_rodent import video
from dreamer_rodent.rollout import EvalError, Episode, scalar

DREAM_SEQUENCES = 4  # episodes shown one above the other in the dream video
DREAM_LENGTH = 150  # steps per dream sequence (3 s at 50 Hz); shorter episodes cut it
DREAM_MIN_HEIGHT = 96  # dream panels are upscaled (nearest) to at least this many pixels per row
OVERLAY_METRICS = 4  # task metrics beyond the go-to ones written on a frame


def frame_text(episode: Episode, episodes: int, obs: dict, step: int) -> list[str]:
    """The numbers printed on a frame: where we are, what the agent earned, how close it is."""
    lines = [f"episode {episode.index + 1}/{episodes}  step {step}"]
    lines.append(f"reward {float(obs['reward']):+.3f}  return {episode.ret:.2f}")
    if episode.final_distance is not None:
        lines.append(f"distance {episode.final_distance:.3f} m")
    if episode.success is not None:
        reached = f" ({episode.targets} targets)" if episode.targets is not None else ""
        lines.append("success " + ("yes" if episode.success else "no") + reached)
    if episode.targets_per_min is not None:
        first = f"  first at {episode.first_reach_s:.1f} s" if episode.first_reach_s is not None else ""
        lines.append(f"{episode.targets_per_min:.1f} targets/min{first}")
    if episode.level is not None:
        lines.append(f"level {episode.level}")
    shown = {"success", "distance", "targets_reached", "targets_per_min", "first_reach_s"}
    others = [k for k in sorted(episode.metrics) if k not in shown and not k.startswith(("curriculum", "level"))]
    for name in others[:OVERLAY_METRICS]:  # the task's own metrics (a maze's targets, a bowl's height, ...)
        value = scalar(obs, "log/" + name)
        if value is not None and math.isfinite(value):
            lines.append(f"{name} {value:.3g}")
    return lines


def compose_frame(view: np.ndarray, obs: dict, lines: Sequence[str], image_key: str | None = "image") -> np.ndarray:
    """Third-person view + numbers (top-left) + egocentric inset (top-right, drawn last so it stays whole)."""
    frame = video.draw_text(view, lines, corner="top-left")
    if image_key and image_key in obs:
        frame = video.add_inset(frame, obs[image_key], corner="top-right")
    return frame


def dream_batch(episodes: Sequence[Episode], max_sequences: int = DREAM_SEQUENCES, length: int = DREAM_LENGTH) -> dict:
    """Stacks the start of up to `max_sequences` recorded episodes into a [B, T, ...] batch.

    All sequences are cut to the shortest one (and to `length` when given) so
    they share T. `action[:, t]` is the action chosen after seeing obs t.
    """
    chosen = [e for e in episodes if e.obs][:max_sequences]
    if not chosen:
        raise EvalError("--dream needs recorded episodes, but none were kept.")
    steps = min(min(len(e.obs) for e in chosen), length)
    if steps < 2:
        raise EvalError("--dream needs episodes of at least 2 steps; raise --env.time_limit.")
    batch = {key: np.stack([np.stack([o[key] for o in e.obs[:steps]]) for e in chosen]) for key in chosen[0].obs[0]}
    batch["action"] = np.stack([np.stack(e.actions[:steps]) for e in chosen]).astype(np.float32)
    return batch


def dream_frames(report: dict, image_key: str = "image", context: int | None = None) -> list[np.ndarray]:
    """Frames of the agent's open-loop prediction video, upscaled and labelled.

    The first `context` steps the model observed real frames; after that it
    imagines from the actions alone, so the error column shows where it drifts.
    """
    key = f"openloop/{image_key}"
    if key not in report:
        known = sorted(k for k in report if k.startswith("openloop/"))
        raise EvalError(
            f"the agent's report has no '{key}' (it has {known or 'no open-loop videos'}); "
            "--dream needs a run with an image key in env.keys."
        )
    clip = np.asarray(report[key])
    if clip.ndim not in (4, 5):
        raise EvalError(f"'{key}' has shape {clip.shape}; expected [T, H, W, 3] or [B, T, H, W, 3].")
    factor = max(1, math.ceil(DREAM_MIN_HEIGHT / clip.shape[-3]))  # per panel, before stacking
    if clip.ndim == 5:
        clip = video.stack_rows(clip)
    steps = len(clip)
    if context is not None:
        context = max(1, min(int(context), steps - 1))  # as the agent clamps it
    frames = []
    for t, frame in enumerate(clip):
        frame = video.label_columns(video.upscale(frame, factor), ["truth", "prediction", "error"])
        phase = "" if context is None else ("  observed" if t < context else "  imagined")
        frames.append(video.draw_text(frame, [f"step {t}{phase}"], corner="bottom-left"))
    return frames

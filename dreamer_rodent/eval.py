"""Evaluate a checkpoint: a video of the rodent and the numbers.

    python -m dreamer_rodent.eval --checkpoint RUN_DIR_OR_CHECKPOINT [--episodes N]
        [--seed S] [--out video.mp4] [--camera NAME] [--size WxH]
        [--level N | --distance METRES] [--deterministic | --stochastic]
        [--split] [--dream] [--record [PATH.nwb] [--record-every N] [--record-control]]
        [--key.sub value ...]
    python -m dreamer_rodent.eval --help [KEY_PREFIX]

Everything needed to rebuild the env and the agent comes from the run directory
(the checkpoint's saved config), so a checkpoint copied off a cluster evaluates
with no other files. Flags change only evaluation settings; any other config key
can still be overridden with a dotted flag (e.g. `--env.time_limit 10` or
`--jax.platform cpu` for a GPU run evaluated on a laptop).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

import dreamer_rodent  # noqa: F401  (sets MUJOCO_GL before dm_control is imported)
from dreamer_rodent import cli_help, gl_backend, video
from dreamer_rodent.config import Config, ConfigError, split_flags

DEFAULT_FPS = 50.0  # the rodents' 20 ms control step
DREAM_SEQUENCES = 4  # episodes shown one above the other in the dream video
DREAM_LENGTH = 150  # steps per dream sequence (3 s at 50 Hz); shorter episodes cut it
DREAM_MIN_HEIGHT = 96  # dream panels are upscaled (nearest) to at least this many pixels per row


class EvalError(Exception):
    """Evaluation cannot go on; the message says what is wrong and how to fix it."""


@dataclasses.dataclass
class EvalArgs:
    checkpoint: str
    episodes: int = 3
    seed: int | None = None
    out: str | None = None
    camera: str | None = None
    size: tuple[int, int] = (640, 480)
    level: int | None = None
    distance: float | None = None
    deterministic: bool = True
    split: bool = False
    dream: bool = False
    collision: bool = False
    record: str | None = None  # "" : beside the MP4 with .nwb
    record_every: int = 1
    record_control: bool = False
    overrides: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Episode:
    """One evaluated episode: its scores and, for --dream, what the agent saw and did."""

    index: int
    ret: float = 0.0
    length: int = 0
    success: bool | None = None
    terminal: bool = False
    final_distance: float | None = None
    min_distance: float | None = None
    level: int | None = None
    targets: int | None = None
    targets_per_min: float | None = None
    first_reach_s: float | None = None
    frames: int = 0
    metrics: dict = dataclasses.field(default_factory=dict)  # every `log/` key of the task: its finite step values
    obs: list = dataclasses.field(default_factory=list)
    actions: list = dataclasses.field(default_factory=list)

    def scores(self) -> dict:
        """The episode's numbers; a field the task has no metric for (a suite task's distance) is left out."""
        scores = {"episode": self.index + 1, "return": self.ret, "length": self.length, "terminal": self.terminal}
        for key, value in (("success", self.success), ("final_distance", self.final_distance),
                           ("min_distance", self.min_distance), ("level", self.level),
                           ("targets_reached", self.targets), ("targets_per_min", self.targets_per_min)):
            if value is not None:
                scores[key] = value
        if self.targets_per_min is not None:
            scores["first_reach_s"] = self.first_reach_s  # None (JSON null): no target reached
        scores["metrics"] = {name: spread(values) for name, values in sorted(self.metrics.items()) if values}
        return scores


OVERLAY_METRICS = 4  # task metrics beyond the go-to ones written on a frame


# ---------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dreamer_rodent.eval",
        allow_abbrev=False,  # `--e` must not silently mean --episodes; dotted config flags pass through
        description="Roll out a trained agent: an MP4 of the rodent plus a JSON and a table of scores. "
        "Other config keys can be overridden with dotted flags (e.g. --env.time_limit 10).",
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="run directory (its latest checkpoint) or one checkpoint in it")
    parser.add_argument("--episodes", type=int, default=3, metavar="N", help="episodes to roll out (default 3)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="env and policy seed (default: the run's seed)")
    parser.add_argument("--out", default=None, metavar="PATH.mp4", help="the MP4 path; scores go to the same stem with .json")
    parser.add_argument("--camera", default=None, metavar="NAME", help="third-person camera by name (default: one tracking the rodent)")
    parser.add_argument("--size", default="640x480", metavar="WxH", help="video frame size WIDTHxHEIGHT (made even; default 640x480)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--level", type=int, default=None, metavar="N", help="pin this curriculum level (default: the level training reached)")
    where.add_argument("--distance", type=float, default=None, metavar="METRES",
                       help="targets up to METRES away, drawn as in training (one curriculum level of that distance)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--deterministic", dest="deterministic", action="store_true", default=True, help="the policy's mode action (default)")
    mode.add_argument("--stochastic", dest="deterministic", action="store_false", help="sample actions as in training")
    parser.add_argument("--split", action="store_true", help="one MP4 per episode instead of one concatenated file")
    parser.add_argument("--dream", action="store_true", help="also write <stem>_dream.mp4: world-model open-loop predictions")
    parser.add_argument("--collision", action="store_true",
                        help="show the walker's collision geoms in the video (by default a skinned rodent shows its skin)")
    parser.add_argument("--record", nargs="?", const="", default=None, metavar="PATH.nwb",
                        help="also write an NWB file of every step: the agent's internal state, the body's kinematics, "
                             "the senses (default path: the MP4's with .nwb; needs pip install -e '.[nwb]')")
    parser.add_argument("--record-every", type=int, default=None, metavar="N", help="with --record: keep one step in N")
    parser.add_argument("--record-control", action="store_true",
                        help="with --record: also record an untrained agent of the same architecture fed the same "
                             "observations (the baseline for probe analyses)")
    return parser


def parse_eval_args(argv: Sequence[str]) -> EvalArgs:
    """Eval flags via argparse; whatever is left must be dotted config overrides."""
    parser = _parser()
    known, rest = parser.parse_known_args(list(argv))
    if known.episodes < 1:
        raise EvalError(f"--episodes must be at least 1, got {known.episodes}.")
    if known.distance is not None and not (known.distance > 0 and math.isfinite(known.distance)):
        raise EvalError(f"--distance must be a positive number of metres, got {known.distance}.")
    if known.level is not None and known.level < 0:
        raise EvalError(f"--level must be >= 0 (0 is the nearest targets), got {known.level}.")
    if known.record is None and (known.record_every is not None or known.record_control):
        flag = "--record-every" if known.record_every is not None else "--record-control"
        raise EvalError(f"{flag} applies to a recording: add --record [PATH.nwb].")
    if known.record_every is not None and known.record_every < 1:
        raise EvalError(f"--record-every must be >= 1 (1 keeps every step), got {known.record_every}.")
    if known.record and not known.record.lower().endswith(".nwb"):
        raise EvalError(f"--record {known.record}: the recording must end in .nwb.")
    try:
        size = video.parse_size(known.size)
    except video.VideoError as e:
        raise EvalError(f"--size: {e}") from None
    return EvalArgs(
        checkpoint=known.checkpoint,
        episodes=known.episodes,
        seed=known.seed,
        out=known.out,
        camera=known.camera,
        size=size,
        level=known.level,
        distance=known.distance,
        deterministic=known.deterministic,
        split=known.split,
        dream=known.dream,
        collision=known.collision,
        record=known.record,
        record_every=known.record_every or 1,
        record_control=known.record_control,
        overrides=_parse_overrides(rest),
    )


def _parse_overrides(rest: Sequence[str]) -> dict:
    """`--key.sub value` pairs left over by argparse -> {'key.sub': 'value'}."""
    try:
        names, overrides, _ = split_flags(rest)
    except ConfigError as e:
        raise EvalError(f"{e} (see --help).") from None
    if names:
        raise EvalError("--configs does not apply to eval: the run's saved config is used; override single keys instead.")
    return overrides


# ---------------------------------------------------------------------------
# Checkpoint and config.


def eval_config(run_config: Config, args: EvalArgs, trained_level: int | None = None) -> Config:
    """The run's config with evaluation settings applied (seed, level or distance, overrides)."""
    try:
        config = run_config.update(args.overrides) if args.overrides else run_config
    except ConfigError as e:
        raise EvalError(f"{e} (eval flags: --episodes --seed --out --camera --size --level --distance "
                        "--deterministic --stochastic --split --dream; other flags must be config keys)") from None
    updates: dict[str, Any] = {"run.envs": 1}
    if args.seed is not None:
        updates["seed"] = args.seed
    levels = list(config.task_kwargs.curriculum_levels)
    if args.distance is not None:
        updates["task_kwargs.curriculum_levels"] = [float(args.distance)]
        updates["task_kwargs.level"] = 0
    elif args.level is not None or trained_level is not None:
        level = args.level if args.level is not None else trained_level
        if level >= len(levels):
            raise EvalError(
                f"--level {level} does not exist: this run has {len(levels)} levels "
                f"(0-{len(levels) - 1}, target distances {levels} m); or pass --distance METRES."
            )
        updates["task_kwargs.level"] = int(level)
    return config.update(updates)


# ---------------------------------------------------------------------------
# Rollouts.


def policy_obs(obs: dict) -> dict:
    """What the agent sees: every key but the `log/` metrics, batched to [1, ...]."""
    return {k: np.asarray(v)[None] for k, v in obs.items() if not k.startswith("log/")}


def _scalar(obs: dict, key: str):
    value = obs.get(key)
    return None if value is None else float(np.asarray(value).reshape(-1)[0])


def run_episodes(
    env,
    act: Callable[[Any, dict], tuple[Any, np.ndarray]],
    init_carry: Callable[[], Any],
    episodes: int,
    on_step: Callable[[Episode, dict, int], None] | None = None,
    keep: tuple[int, int] = (0, 0),
    on_episode_end: Callable[[Episode], None] | None = None,
    act_on_last: bool = False,
) -> list[Episode]:
    """Rolls out whole episodes; `on_step(episode, obs, step)` sees every observation.

    Step 0 is the episode's first observation; the return and length count the
    steps after it, so a video has length + 1 frames per episode. `keep =
    (episodes, steps)` records the agent's observations and actions of the first
    steps of the first episodes (for --dream), and no more, to bound memory.
    `act_on_last` lets the policy see the last observation too (its action is
    not executed), so a recording has the agent's state at every frame.
    """
    act_space = env.act_space
    zero_action = np.zeros(act_space["action"].shape, act_space["action"].dtype)
    results = []
    for index in range(episodes):
        episode = Episode(index)
        obs = env.step({"action": zero_action, "reset": True})
        if not bool(obs["is_first"]):
            raise EvalError("the env did not start a new episode on reset (is_first is false).")
        carry = init_carry()
        step = 0
        while True:
            _record(episode, obs, step)
            if on_step:
                on_step(episode, obs, step)
            if bool(obs["is_last"]):
                if act_on_last:
                    act(carry, obs)
                break
            carry, action = act(carry, obs)
            if index < keep[0] and step < keep[1]:
                episode.obs.append({k: np.asarray(v) for k, v in obs.items() if not k.startswith("log/")})
                episode.actions.append(action)
            obs = env.step({"action": action, "reset": False})
            step += 1
        if index < keep[0] and step < keep[1]:  # the last observation has no action after it
            episode.obs.append({k: np.asarray(v) for k, v in obs.items() if not k.startswith("log/")})
            episode.actions.append(np.zeros_like(zero_action))
        results.append(episode)
        if on_episode_end:
            on_episode_end(episode)
    return results


def _record(episode: Episode, obs: dict, step: int) -> None:
    if step > 0:
        episode.ret += float(obs["reward"])
        episode.length = step
    episode.terminal = bool(obs.get("is_terminal", False))
    for key, value in obs.items():
        if key.startswith("log/"):
            value = float(np.asarray(value).reshape(-1)[0])
            values = episode.metrics.setdefault(key[len("log/"):], [])
            if math.isfinite(value):
                values.append(value)
    success = _scalar(obs, "log/success")
    if success is not None:
        episode.success = bool(episode.success) or success > 0.5
    distance = _scalar(obs, "log/distance")
    if distance is not None:
        episode.final_distance = distance
        episode.min_distance = distance if episode.min_distance is None else min(episode.min_distance, distance)
    targets = _scalar(obs, "log/targets_reached")
    if targets is not None:
        episode.targets = int(targets)
    rate = _scalar(obs, "log/targets_per_min")
    if rate is not None:
        episode.targets_per_min = rate
    first = _scalar(obs, "log/first_reach_s")
    if first is not None:  # NaN until the first reach; strict JSON has no NaN, so None stands for it
        episode.first_reach_s = first if math.isfinite(first) else None
    level = _scalar(obs, "log/curriculum_episode_level")
    level = _scalar(obs, "log/curriculum_level") if level is None else level
    level = _scalar(obs, "log/level") if level is None else level
    if level is not None:
        episode.level = int(level)


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
        value = _scalar(obs, "log/" + name)
        if value is not None and math.isfinite(value):
            lines.append(f"{name} {value:.3g}")
    return lines


def compose_frame(view: np.ndarray, obs: dict, lines: Sequence[str], image_key: str | None = "image") -> np.ndarray:
    """Third-person view + numbers (top-left) + egocentric inset (top-right, drawn last so it stays whole)."""
    frame = video.draw_text(view, lines, corner="top-left")
    if image_key and image_key in obs:
        frame = video.add_inset(frame, obs[image_key], corner="top-right")
    return frame


# ---------------------------------------------------------------------------
# Scores.


def spread(values: Sequence[float]) -> dict:
    values = np.asarray(list(values), np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def summarize(episodes: Sequence[Episode]) -> dict:
    """Mean and spread of return and length, success rate, and the per-episode list."""
    if not episodes:
        raise EvalError("no episodes were evaluated.")
    successes = [e.success for e in episodes if e.success is not None]
    distances = [e.final_distance for e in episodes if e.final_distance is not None]
    rates = [e.targets_per_min for e in episodes if e.targets_per_min is not None]
    firsts = [e.first_reach_s for e in episodes if e.first_reach_s is not None]
    scores = {"episodes": len(episodes), "return": spread([e.ret for e in episodes]),
              "length": spread([e.length for e in episodes])}
    # Only the measures the task has: a suite task gets no success, distance or reach fields at all.
    if successes:
        scores["success_rate"] = float(np.mean(successes))
    if distances:
        scores["final_distance"] = spread(distances)
    if rates:
        scores["targets_per_min"] = spread(rates)
        # Over the episodes that reached a target (success_rate says how many did); None if none did.
        scores["first_reach_s"] = spread(firsts) if firsts else None
    # Every `log/` metric of the task: the spread over episodes of each episode's mean.
    names = sorted({name for e in episodes for name, values in e.metrics.items() if values})
    scores["metrics"] = {name: spread([np.mean(e.metrics[name]) for e in episodes if e.metrics.get(name)])
                         for name in names}
    scores["per_episode"] = [e.scores() for e in episodes]
    return scores


def strict_json(value):
    """`value` with every NaN or infinite float replaced by None: the scores file is strict JSON (no NaN)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def format_table(scores: dict) -> str:
    """The per-episode table and the summary lines printed after evaluation (columns the task has)."""
    def show(value, fmt="{}"):
        return "-" if value is None else fmt.format(value)

    columns = [("episode", "episode", 7, "{}"), ("return", "return", 10, "{:.3f}"), ("length", "length", 6, "{}")]
    optional = [("success", "success", 7, None), ("targets_reached", "targets", 7, "{}"),
                ("targets_per_min", "per min", 7, "{:.2f}"), ("first_reach_s", "1st at s", 8, "{:.2f}"),
                ("final_distance", "final dist", 10, "{:.3f}"), ("level", "level", 5, "{}")]
    columns += [c for c in optional if any(c[0] in e for e in scores["per_episode"])]
    header = "  ".join(f"{title:>{width}}" for _, title, width, _ in columns)
    rows = [header, "-" * len(header)]
    for e in scores["per_episode"]:
        cells = []
        for key, _, width, fmt in columns:
            value = e.get(key)
            text = ("yes" if value else "no") if key == "success" and value is not None else show(value, fmt or "{}")
            cells.append(f"{text:>{width}}")
        rows.append("  ".join(cells))
    rows.append("-" * len(header))
    for name in ("return", "length", "final_distance", "targets_per_min", "first_reach_s"):
        s = scores.get(name)
        if s:
            rows.append(f"{name:<15} mean {s['mean']:.3f}  std {s['std']:.3f}  min {s['min']:.3f}  max {s['max']:.3f}")
    if "success_rate" in scores:
        rows.append(f"{'success_rate':<15} {scores['success_rate']:.3f}")
    shown = {"success", "distance", "targets_per_min", "first_reach_s"}
    for name, s in scores.get("metrics", {}).items():
        if name not in shown:
            rows.append(f"log/{name:<11} mean {s['mean']:.4g}  std {s['std']:.4g}  min {s['min']:.4g}  "
                        f"max {s['max']:.4g}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------
# Dream video.


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


# ---------------------------------------------------------------------------
# Main.


def default_out(run_dir: pathlib.Path, checkpoint_name: str, config: Config, args: EvalArgs) -> pathlib.Path:
    """`<run>/eval/<checkpoint>_<level or distance>_<det|stoch>_seed<seed>.mp4`: settings readable from the name."""
    if args.distance is not None:
        where = f"dist{args.distance:g}m"
    elif int(config.task_kwargs.level) >= 0:
        where = f"level{config.task_kwargs.level}"
    else:  # a task without a curriculum
        where = ""
    parts = [checkpoint_name, where, "det" if args.deterministic else "stoch", f"seed{config.seed}"]
    return run_dir / "eval" / ("_".join(p for p in parts if p) + ".mp4")


@dataclasses.dataclass
class Loaded:
    """A verified checkpoint and where it lives."""

    path: pathlib.Path
    run_dir: pathlib.Path
    config: Config
    arrays: dict
    state: dict
    step: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def trained_level(self) -> int | None:
        """The furthest curriculum level any training env reached (None: no curriculum state)."""
        levels = [int(s["level"]) for s in self.state.get("curriculum") or [] if isinstance(s, dict) and "level" in s]
        return max(levels) if levels else None


def load_checkpoint(path) -> Loaded:
    """The runtime's own loader (verifies the manifest), with eval's hints on failure.

    A corrupt checkpoint is reported, not skipped or renamed: evaluation never
    modifies a run directory, and the user should know which file is damaged.
    """
    from dreamer_rodent import checkpoint as ckpt_lib

    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise EvalError(f"--checkpoint {path} does not exist. Pass a run directory (the --logdir of a training run) "
                        f"or a checkpoint directory inside it (<run>/{ckpt_lib.CHECKPOINTS}/ckpt_*).")
    try:
        found = ckpt_lib.find(path)
    except ckpt_lib.CheckpointError:
        if (path / "config.yaml").exists():
            raise EvalError(
                f"the run {path} has no checkpoint yet: training writes one every run.save_every seconds and when it "
                "ends. Wait for the first one, or stop the run with Ctrl-C (it saves before exiting)."
            ) from None
        raise EvalError(f"no checkpoint in {path}: pass a run directory (with {ckpt_lib.CHECKPOINTS}/ and config.yaml) "
                        f"or a ckpt_* directory inside one.") from None
    try:
        loaded = ckpt_lib.load(found)
    except ckpt_lib.CheckpointError as error:
        others = [p.name for p in ckpt_lib.Checkpointer(found.parent.parent).list() if p != found]
        hint = (f" Evaluate an earlier one instead, e.g. --checkpoint {found.parent / others[-1]}"
                f" (complete checkpoints: {', '.join(others)})." if others else
                " There is no other complete checkpoint in this run.")
        raise EvalError(f"{error}{hint}") from None
    except (OSError, ValueError, KeyError) as error:  # unreadable npz/json/yaml despite a matching manifest
        raise EvalError(f"checkpoint {found} cannot be read ({type(error).__name__}: {error}): a running training may "
                        "have just pruned it (run eval again), or it is damaged.") from None
    run_dir = found.parent.parent if found.parent.name == ckpt_lib.CHECKPOINTS else found.parent
    return Loaded(found, run_dir, _with_defaults(loaded.config), loaded.arrays, loaded.state, loaded.step)


def _with_defaults(config: Config) -> Config:
    """The saved config over today's defaults, so a checkpoint from an older version still has every key."""
    from dreamer_rodent.config import build_config
    from tasks import registry

    module = str(config.get("task_module", "") or "")
    registry.load_module(module)  # a plugin task: its declared settings are among the defaults
    defaults = build_config([], {"task": config.task, "task_module": module})
    known = defaults.flat()
    saved = {k: v for k, v in config.flat().items() if k in known and not isinstance(v, dict)}
    return defaults.update(saved)


def _reseed_policy(arrays: dict, seed: int) -> dict:
    """Replaces the saved policy RNG key so that --seed also varies --stochastic action noise.

    `policy_key` is the name `Agent.save` gives the policy's key; a checkpoint
    without it (or with another key layout) keeps its saved key.
    """
    saved = arrays.get("policy_key")
    if saved is None:
        return arrays
    import jax

    key = np.asarray(jax.random.PRNGKey(seed + 1))
    if key.shape != np.shape(saved):
        return arrays
    return dict(arrays, policy_key=key.astype(np.asarray(saved).dtype))


def control_fps(env) -> float:
    """Frames per second that play the episode in real time: 1 / (control timestep x action repeat)."""
    dt = getattr(env, "dt", None)
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        return DEFAULT_FPS
    return 1.0 / dt if dt > 0 else DEFAULT_FPS


def check_view(env, camera: str | None, width: int, height: int) -> str:
    """Checks the camera name and the frame size against the scene before any episode runs."""
    try:
        model = env.physics.model
        max_w, max_h = int(model.vis.global_.offwidth), int(model.vis.global_.offheight)
    except AttributeError:
        max_w = max_h = None
    if max_w and (width > max_w or height > max_h):
        raise EvalError(f"--size {width}x{height} is larger than this scene's offscreen framebuffer "
                        f"({max_w}x{max_h}); use --size {max_w - max_w % 2}x{max_h - max_h % 2} or smaller.")
    try:
        env.render(camera, width, height)
    except ValueError as error:  # the env lists the camera names
        raise EvalError(f"--camera: {error}") from None
    return camera or getattr(env, "default_camera", None) or ""


def evaluate(args: EvalArgs, log: Callable[[str], None] = print) -> dict:
    """Loads the checkpoint, rolls out episodes, writes video(s) and the JSON; returns the scores."""
    loaded = load_checkpoint(args.checkpoint)
    pinned = args.level is not None or args.distance is not None
    config = eval_config(loaded.config, args, trained_level=None if pinned else loaded.trained_level)
    out = pathlib.Path(args.out).expanduser() if args.out else default_out(loaded.run_dir, loaded.name, config, args)
    if out.suffix.lower() != ".mp4":
        raise EvalError(f"--out {out}: the video must end in .mp4 (the scores go beside it as .json).")
    device = jax_device(config)
    from dreamer_rodent.env import make_env

    env = make_env(config, 0)
    try:
        import jax

        with jax.default_device(device):
            return _evaluate(env, loaded, config, args, out, log)
    finally:
        env.close()


def jax_device(config: Config):
    """The first device of the run's `jax.platform` (override with --jax.platform cpu to evaluate a GPU run on a CPU).

    Evaluation is one process on one device: no mesh and no multi-host join, and
    no GPU memory preallocation, since the renderer shares the GPU.
    """
    import os

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from dreamer_rodent import distributed

    import jax

    cache = str(config.jax.get("cache_dir", "") or "")
    if cache:  # reuse compiled agents between evaluations of big models
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return distributed.local_devices(config)[0]


def _evaluate(env, loaded: Loaded, config: Config, args: EvalArgs, out: pathlib.Path, log) -> dict:
    has_curriculum = "log/curriculum_level" in env.obs_space
    if (args.level is not None or args.distance is not None) and not has_curriculum:
        flag = "--level" if args.level is not None else "--distance"
        raise EvalError(f"{flag}: task '{config.task}' has no target-distance curriculum; drop {flag}.")
    width, height = args.size
    camera = check_view(env, args.camera, width, height)
    fps = control_fps(env)
    obs_space = {k: v for k, v in env.obs_space.items() if not k.startswith("log/")}
    act_space = {k: v for k, v in env.act_space.items() if k != "reset"}
    from dreamer_rodent.agent import Agent, with_task_keys

    agent = Agent(obs_space, act_space, with_task_keys(config, obs_space), mesh=None)
    try:
        agent.load(_reseed_policy(loaded.arrays, int(config.seed)))
    except (KeyError, ValueError) as error:
        raise EvalError(f"the checkpoint's agent does not fit its own config: {error}") from None
    mode = "eval" if args.deterministic else "train"
    image_key = "image" if "image" in env.obs_space else None
    if args.dream and image_key is None:
        raise EvalError("--dream shows the world model's predicted images, but this run has no 'image' in env.keys; "
                        "drop --dream.")
    level = config.task_kwargs.level if has_curriculum and args.distance is None else None
    where = (f"targets up to {args.distance:g} m" if args.distance is not None else
             f"curriculum level {level}" if level is not None and level >= 0 else "no curriculum")
    log(f"Evaluating {loaded.path} (env step {loaded.step}): task {config.task}, {args.episodes} episode(s), {where}, "
        f"{'deterministic' if args.deterministic else 'stochastic'} actions, camera {camera}, "
        f"{width}x{height} at {fps:g} fps.")

    recorder, control = _start_recording(env, agent, loaded, config, args, out, obs_space, act_space)

    def act(carry, obs):
        carry, control_carry = carry
        carry, output = agent.policy(carry, policy_obs(obs), mode=mode, record=recorder is not None)
        action = np.asarray(output["action"], np.float32)[0]
        if recorder is not None:
            recorder.step_agent(output["internals"], action)
        if control is not None:  # the untrained twin reads the same observation and moves with the executed action
            control_carry, twin = control.policy(control_carry, policy_obs(obs), mode=mode, record=True)
            recorder.step_agent(twin["internals"], np.asarray(twin["action"], np.float32)[0], "agent_untrained")
            control_carry = dict(control_carry, action=np.asarray(action[None], np.float32))
        return (carry, control_carry), action

    def init_carry():
        return agent.init_policy(1), control.init_policy(1) if control is not None else None

    videos: list[str] = []
    state: dict[str, Any] = {"writer": None}

    def on_episode_end(episode: Episode) -> None:
        if recorder is not None:
            recorder.end_episode(episode.scores(), episode.frames, episode.length)

    def on_step(episode: Episode, obs: dict, step: int) -> None:
        if recorder is not None:
            recorder.step_body(env.physics, obs, step)
        writer = state["writer"]
        if writer is None or (args.split and step == 0):
            if writer is not None:
                writer.close()
            path = out.with_name(f"{out.stem}_ep{episode.index + 1:03d}.mp4") if args.split else out
            writer = state["writer"] = video.VideoWriter(path, fps)
            videos.append(str(path))
        view = env.render(camera, width, height, collision=args.collision)
        writer.append(compose_frame(view, obs, frame_text(episode, args.episodes, obs, step), image_key))
        episode.frames += 1

    start = time.time()
    try:
        keep = (DREAM_SEQUENCES, DREAM_LENGTH) if args.dream else (0, 0)
        episodes = run_episodes(env, act, init_carry, args.episodes, on_step, keep, on_episode_end,
                                act_on_last=recorder is not None)
    except BaseException:
        if recorder is not None:
            recorder.discard()
        raise
    finally:
        if state["writer"] is not None:
            state["writer"].close()
    scores = summarize(episodes)
    result = {
        "checkpoint": str(loaded.path),
        "run_dir": str(loaded.run_dir),
        "task": config.task,
        "env_steps": int(loaded.state.get("counters", {}).get("env_steps", loaded.step)),
        "settings": {
            "episodes": args.episodes,
            "seed": int(config.seed),
            "deterministic": args.deterministic,
            **({"level": level} if level is not None else {}),
            **({"distance": args.distance} if args.distance is not None else {}),
            "camera": camera,
            "size": [width, height],
            "fps": fps,
            "time_limit": float(config.env.time_limit),
            "overrides": args.overrides,
        },
        **scores,
        "videos": videos,
        "frames": int(sum(e.frames for e in episodes)),
        "seconds": round(time.time() - start, 2),
    }
    if args.dream:
        dream_path = out.with_name(f"{out.stem}_dream.mp4")
        batch = dream_batch(episodes)
        report = agent.report(batch)
        context = config.agent.get("report_context")
        frames = dream_frames(report, image_key, context=context)
        video.write_video(dream_path, frames, fps)
        result["dream_video"] = str(dream_path)
        result["dream_mse"] = report.get(f"openloop/{image_key}_mse")
    if recorder is not None:
        recorder_start = time.time()
        path = recorder.close(videos)
        result["recording"] = {"path": str(path), "bytes": path.stat().st_size, "record_every": recorder.every,
                               "control": control is not None, "write_seconds": round(time.time() - recorder_start, 2)}
    json_path = out.with_suffix(".json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(strict_json(result), indent=2, allow_nan=False) + "\n")
    log(format_table(scores))
    for path in videos + ([result["dream_video"]] if args.dream else []):
        log(f"Video: {path}")
    if recorder is not None:
        log(f"Recording: {result['recording']['path']} ({result['recording']['bytes'] / 1e6:.1f} MB)")
    log(f"Scores: {json_path}")
    result["json"] = str(json_path)
    return result


def _start_recording(env, agent, loaded: Loaded, config: Config, args: EvalArgs, out: pathlib.Path,
                     obs_space, act_space):
    """The NWB recorder for --record (and the untrained twin for --record-control), or (None, None)."""
    if args.record is None:
        return None, None
    from dreamer_rodent import recording
    from dreamer_rodent.agent import Agent, with_task_keys
    from dreamer_rodent.config import yaml_dump
    from tasks import registry

    recording.require_pynwb()
    control = Agent(obs_space, act_space, with_task_keys(config, obs_space), mesh=None) if args.record_control else None
    names = recording.BodyReader(env).actuators
    action_columns = names if len(names) == act_space["action"].shape[0] else \
        [f"action[{i}]" for i in range(act_space["action"].shape[0])]
    try:
        walker = registry.get(config.task).walker
    except registry.UnknownTaskError:  # the env was built, so only a renamed registry entry lands here
        walker = ""
    metadata = {
        "task": config.task, "walker": walker, "checkpoint": str(loaded.path), "run_dir": str(loaded.run_dir),
        "env_steps": int(loaded.state.get("counters", {}).get("env_steps", loaded.step)), "seed": int(config.seed),
        "deterministic": args.deterministic, "record_every": args.record_every, "step_seconds": 1.0 / control_fps(env),
        "action_repeat": int(config.env.action_repeat), "episodes": args.episodes,
        "config": yaml_dump(config.to_dict()),
    }
    path = pathlib.Path(args.record).expanduser() if args.record else out.with_suffix(".nwb")
    recorder = recording.Recorder(path, env, recording.agent_series_names(agent.branches), action_columns,
                                  1.0 / control_fps(env), metadata,
                                  record_every=args.record_every, control=control is not None)
    return recorder, control


def _known_errors() -> tuple[type, ...]:
    """User-facing error types of the parts eval drives (printed as `error: ...`, no traceback)."""
    from dreamer_rodent.checkpoint import CheckpointError
    from dreamer_rodent.gl_backend import GLBackendError
    from dreamer_rodent.recording import RecordingError
    from tasks.registry import TaskConfigError, UnknownTaskError

    return CheckpointError, UnknownTaskError, TaskConfigError, GLBackendError, RecordingError


def main(argv: Sequence[str] | None = None) -> int:
    """The command line entry point; known failures print `error: ...` and return 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        wants_help, prefix = cli_help.help_request(argv)
        if wants_help:  # before argparse, which would exit from inside main and list no config keys
            print(cli_help.eval_help(_parser().format_help(), prefix), end="", flush=True)
            return 0
        gl_backend.check()  # eval renders its video: a backend that cannot is one line, not a PyOpenGL traceback
        args = parse_eval_args(argv)
        evaluate(args)
    except (EvalError, ConfigError, video.VideoError, *_known_errors()) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

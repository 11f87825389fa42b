"""Evaluate a checkpoint: a video of the rodent and the numbers (the command line and the orchestration;
the rollout is dreamer_rodent/rollout.py, the frames overlay.py, the numbers scores.py, NWB recording.py).

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
from dreamer_rodent import cli_help, gl_backend, host_memory, video
from dreamer_rodent.config import Config, ConfigError, split_flags, with_defaults
from dreamer_rodent.overlay import DREAM_LENGTH, DREAM_SEQUENCES, compose_frame, dream_batch, dream_frames, frame_text
from dreamer_rodent.rollout import EvalError, Episode, policy_obs, run_episodes
from dreamer_rodent.scores import format_table, strict_json, summarize

DEFAULT_FPS = 50.0  # the rodents' 20 ms control step


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
                        "--deterministic --stochastic --split --dream --collision --record --record-every "
                        "--record-control; other flags must be config keys)") from None
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
    def env_steps(self) -> int:
        """Env steps trained when the checkpoint was saved (its step where the state has no counters)."""
        return int(self.state.get("counters", {}).get("env_steps", self.step))

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
    return Loaded(found, run_dir, with_defaults(loaded.config), loaded.arrays, loaded.state, loaded.step)


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

    recorder, control = _start_recording(env, agent, loaded, config, args, out, obs_space, act_space, fps)
    try:  # the spool of an unfinished recording goes, whatever ends the evaluation (close() has already removed it)

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
            # The policy sees every last observation too, recording or not, so that --record never changes the
            # stochastic policy's noise (each call draws a key) and a recording has the agent's state at every frame.
            episodes = run_episodes(env, act, init_carry, args.episodes, on_step, keep, on_episode_end, act_on_last=True)
        finally:
            if state["writer"] is not None:
                state["writer"].close()
        scores = summarize(episodes)
        result = {
            "checkpoint": str(loaded.path),
            "run_dir": str(loaded.run_dir),
            "task": config.task,
            "env_steps": loaded.env_steps,
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
    finally:
        if recorder is not None:
            recorder.discard()


def _start_recording(env, agent, loaded: Loaded, config: Config, args: EvalArgs, out: pathlib.Path,
                     obs_space, act_space, fps: float):
    """The NWB recorder for --record (and the untrained twin for --record-control), or (None, None)."""
    if args.record is None:
        return None, None
    from dreamer_rodent import recording
    from dreamer_rodent.agent import Agent, with_task_keys
    from dreamer_rodent.config import yaml_dump
    from tasks import registry

    try:
        walker = registry.get(config.task).walker
    except registry.UnknownTaskError:  # the env was built, so only a renamed registry entry lands here
        walker = ""
    metadata = {
        "task": config.task, "walker": walker, "checkpoint": str(loaded.path), "run_dir": str(loaded.run_dir),
        "env_steps": loaded.env_steps, "seed": int(config.seed),
        "deterministic": args.deterministic, "record_every": args.record_every, "step_seconds": 1.0 / fps,
        "action_repeat": int(config.env.action_repeat), "episodes": args.episodes,
        "config": yaml_dump(config.to_dict()),
    }
    path = pathlib.Path(args.record).expanduser() if args.record else out.with_suffix(".nwb")
    recorder = recording.Recorder(path, env, agent.internal_names, act_space["action"].shape[0],
                                  1.0 / fps, metadata, record_every=args.record_every,
                                  control=args.record_control)  # checks pynwb and the path first
    control = Agent(obs_space, act_space, with_task_keys(config, obs_space), mesh=None) if args.record_control else None
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


def cli() -> int:
    """The command (`python -m ...` and the console script): `main` in a process whose allocator uses huge pages."""
    host_memory.use_huge_pages()  # executes this command again, once, with GLIBC_TUNABLES set (dreamer_rodent/host_memory.py)
    return main()


if __name__ == "__main__":
    sys.exit(cli())

"""Training entry point: `python -m dreamer_rodent.train --task rodent_goto [--configs ...] [--logdir DIR]`
(`--help [PREFIX]` lists the presets and config keys).

The loop a researcher leaves running overnight: envs in worker processes, a
batched policy, uniform replay at a fixed train ratio, metrics to
metrics.jsonl and TensorBoard, and checkpoints every `run.save_every` seconds
and on SIGINT/SIGTERM. Rerunning the same command with the same `--logdir`
resumes from the newest complete checkpoint. Every check that can fail on user
input (task, devices, batch split, logdir, checkpoint compatibility) runs before
anything is written, so a bad command leaves an existing run untouched.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import multiprocessing
import os
import pathlib
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from typing import Sequence

import numpy as np

from dreamer_rodent import checkpoint as ckpt
from dreamer_rodent import cli_help, distributed, gl_backend, host_memory
from dreamer_rodent.alarm import ExploitationAlarm, real_reward_gap
from dreamer_rodent.collector import Collector
from dreamer_rodent.config import Config, ConfigError, parse_args, with_cpu_preset, with_defaults
from dreamer_rodent.driver import Driver, Recent, agent_obs
from dreamer_rodent.env import make_env
from dreamer_rodent.logger import Averages, Logger, Phase, Progress
from dreamer_rodent.periodic_eval import PeriodicEval, check_eval_config
from dreamer_rodent.replay import Replay

STATE_VERSION = 1


class RunError(RuntimeError):
    """The run cannot start or continue; the message says why and what to do."""


# ---------------------------------------------------------------------------
# Checks that run before anything is written.


def check_config(config: Config) -> None:
    """Values that would fail later, reported now with the key to change."""
    from tasks import registry

    from tasks import base

    registry.load_module(str(config.task_module or ""))  # TaskConfigError naming the module and its error
    registry.get(config.task)  # UnknownTaskError naming the closest task
    try:
        base.check_keys(config.env.keys)  # else a TaskConfigError from inside the env workers
    except base.TaskConfigError as error:
        raise ConfigError(str(error)) from None
    rules = [
        ("run.steps", config.run.steps > 0, "> 0"),
        ("run.envs", config.run.envs >= 1, ">= 1"),
        ("run.train_ratio", config.run.train_ratio > 0, "> 0"),
        ("run.prefill", config.run.prefill >= 0, ">= 0"),
        ("run.save_every", config.run.save_every > 0, "> 0 seconds"),
        ("run.log_every", config.run.log_every > 0, "> 0 seconds"),
        ("run.keep_checkpoints", config.run.keep_checkpoints >= 1, ">= 1"),
        ("run.max_nonfinite", config.run.max_nonfinite >= 1, ">= 1"),
        ("run.collect_ahead", config.run.collect_ahead >= 0, ">= 0 (0: collect and train in turn)"),
        ("batch_size", config.batch_size >= 1, ">= 1"),
        ("batch_length", config.batch_length >= 2, ">= 2"),
        ("replay.chunk", config.replay.chunk >= 1, ">= 1"),
        ("replay.capacity", config.replay.capacity >= config.batch_length, ">= batch_length"),
    ] + [(f"agent.rec_scales.{branch}", scale >= 0, ">= 0") for branch, scale in config.agent.rec_scales.items()]
    for key, ok, rule in rules:
        if not ok:
            raise ConfigError(f"config key '{key}' must be {rule}, got {config[key]!r}.")
    check_eval_config(config)
    from dreamer_rodent.agent.agent import check_agent_config

    try:
        check_agent_config(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config.agent.get("train_carry", False):
        raise ConfigError(
            "agent.train_carry=True carries each batch row's last latent state into the next batch, which is only "
            "right for a replay that serves consecutive chunks; this runtime's replay samples sequences uniformly, "
            "so the carried state would belong to an unrelated sequence. Drop --agent.train_carry."
        )
    if "image" in config.env.keys:  # else a MuJoCo traceback from inside an env worker
        try:
            base.check_image_size(config.env.image_size)
        except base.TaskConfigError as error:
            raise ConfigError(str(error)) from None
    if "image" in config.env.keys and "image" in config.agent.image_keys:
        # The agent checks this too, but only after the env workers started; a ValueError there was a traceback.
        stages, size = len(config.agent.cnn_mults), int(config.env.image_size)
        if size % 2**stages or size < 2**stages:
            fits = sorted({max(1, round(size / 2**stages)) * 2**stages, max(1, size // 2**stages) * 2**stages})
            raise ConfigError(
                f"env.image_size={size} does not fit the image CNN: its {stages} stride-2 stages (agent.cnn_mults="
                f"{list(config.agent.cnn_mults)}) need a size divisible by {2**stages}. Use --env.image_size "
                f"{' or '.join(str(f) for f in fits)}, or run without images (--configs proprio_only)."
            )


def config_warnings(config: Config) -> list[str]:
    """Settings that run but are almost certainly not what was meant (printed at start, not errors)."""
    notes = []
    steps, prefill = config.run.steps, config.run.prefill
    if 0 < steps <= prefill:
        # Not an error: a run that only collects the random prefill is a legitimate way to make a checkpoint
        # without training (the eval tests, a warm start that copies weights); but a typo would say "Finished".
        notes.append(
            f"run.steps={_number(steps)} is not above run.prefill={_number(prefill)}, so the run collects only "
            f"random-action prefill steps and makes no update: the agent will not train. Raise --run.steps above "
            f"{_number(prefill)} or lower --run.prefill."
        )
    envs, cores = int(config.run.envs), os.cpu_count() or 1
    if config.run.env_parallel == "process" and envs > 4 * cores:
        notes.append(f"run.envs={envs} worker processes on {cores} cores: they take turns on the cores, so beyond "
                     f"about {cores} envs each one adds memory and start-up time but no speed. Consider "
                     f"--run.envs {cores}.")
    from tasks import registry

    for problem in registry.problems():  # this run's task is fine (check_config passed), but a plugin is broken
        notes.append(f"task file {problem} (python -m dreamer_rodent.tasks lists the tasks that do load)")
    return notes


def _number(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def resolve_logdir(config: Config, now: datetime.datetime | None = None) -> pathlib.Path:
    """`--logdir` as given (`{timestamp}` and `{task}` filled in), or a new `./logdir/<UTC time>_<task>` when empty."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if config.logdir:
        text = str(config.logdir)
        for name in set(re.findall(r"{([^{}]*)}", text)) - {"timestamp", "task"}:
            raise ConfigError(f"--logdir {text}: unknown placeholder {{{name}}}; use {{timestamp}} (UTC, "
                              "YYYYmmdd_HHMMSS) and {task}.")
        text = text.replace("{timestamp}", f"{now:%Y%m%d_%H%M%S}").replace("{task}", str(config.task))
        return pathlib.Path(text).expanduser().resolve()
    return (pathlib.Path("logdir") / f"{now:%Y%m%d_%H%M%S}_{config.task}").resolve()


def check_writable(rundir: pathlib.Path) -> None:
    """The run directory (or its nearest existing parent) must be writable by us."""
    probe = rundir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RunError(f"cannot use logdir {rundir}: {probe} is a file, not a directory. Choose another --logdir.")
    try:  # os.access says yes to root even on read-only mounts: try a real file
        fd, name = tempfile.mkstemp(dir=probe, prefix=".write_test_")
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        raise RunError(
            f"cannot write to logdir {rundir}: {probe} is not writable ({error.strerror}). Choose a writable "
            "--logdir (or fix its permissions)."
        ) from None


def saved_config(rundir: pathlib.Path) -> Config | None:
    """The config a run directory was made with (its latest checkpoint's, else its own), over today's defaults."""
    if not rundir.exists():
        return None
    latest = ckpt.Checkpointer(rundir, 1).latest()
    for path in ([latest / "config.yaml"] if latest is not None else []) + [rundir / "config.yaml"]:
        try:
            return with_defaults(Config.load(path))
        except Exception:  # noqa: BLE001 - missing or damaged: find_resume and the loader report it
            continue
    return None


def choose_model_size(argv: Sequence[str], config: Config, platform: str, saved: Config | None):
    """The command line's config, or on a CPU its `jax.cpu_preset` variant (`with_cpu_preset`), and the note.

    A resume keeps the model its run was made with: where exactly one of the two variants fits the saved
    config's shapes, that one, whatever the platform now (a run the CPU preset sized resumes on a GPU, and a run
    made before the preset existed resumes on a CPU)."""
    sized, note = with_cpu_preset(argv, config, "cpu")
    if note is None:
        return config, None
    if saved is not None:
        fits_sized, fits_plain = (not ckpt.shape_differences(saved, c) for c in (sized, config))
        if fits_sized != fits_plain:
            if fits_plain:
                return config, None
            return sized, (note if platform == "cpu" else
                           f"this run was made on a CPU with the '{config.jax.cpu_preset}' preset "
                           "(jax.cpu_preset), and it resumes with that model.")
    return (sized, note) if platform == "cpu" else (config, None)


def task_changes(saved: Config | None, config: Config) -> list[str]:
    """What a resume changes about the task the run trained on (env.* and task_kwargs.*, e.g. a preset's physics
    step or posture weight that changed since the run began): one line each, with the flag that keeps the old one."""
    if saved is None:
        return []
    old, new = saved.flat(), config.flat()
    changed = sorted(k for k in old if k.split(".")[0] in ("env", "task_kwargs") and k != "env.egl_device"
                     and old[k] != new.get(k))

    def flag(value):  # a list flag takes its items as separate words (--env.keys proprio task)
        return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    return [f"this run was made with {k}={old[k]!r} and resumes with {new.get(k)!r}; to keep the task it trained "
            f"on, rerun with --{k} {flag(old[k])}" for k in changed]


def find_resume(rundir: pathlib.Path, config: Config, keep: int):
    """The checkpoint to resume from (metadata only), after checking the config fits it."""
    if not rundir.exists():
        return None
    saver = ckpt.Checkpointer(rundir, keep)
    latest = saver.latest()
    if latest is not None:
        try:
            old = Config.load(latest / "config.yaml")
        except Exception:  # noqa: BLE001 - a damaged checkpoint is reported (and skipped) when it is loaded
            old = None
        if old is not None:
            ckpt.check_compatible(with_defaults(old), config, latest)
        return latest
    if (rundir / "config.yaml").exists():
        ckpt.check_compatible(with_defaults(Config.load(rundir / "config.yaml")), config, rundir / "config.yaml")
    return None


class RunLock:
    """One trainer per run directory: a second one would interleave checkpoints."""

    def __init__(self, rundir: pathlib.Path):
        import fcntl

        self.path = rundir / ".lock"
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self.file.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise RunError(
                    f"another training process is using {rundir} (it holds {self.path}). Stop it first, or "
                    "choose another --logdir."
                ) from None
            raise
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self):
        self.file.close()


class Interrupted(BaseException):
    """SIGINT/SIGTERM while the run was starting (nothing trained since the last checkpoint to save)."""

    def __init__(self, signame: str, phase: str | None):
        self.signame, self.phase = signame, phase
        super().__init__(f"{signame} during: {phase}")


class StopSignals:
    """SIGINT and SIGTERM, honoured within seconds in every phase.

    In the training loop a signal sets a flag, and the loop saves a checkpoint
    and stops. While the run is starting (a `phase`: building envs, building or
    compiling the agent) there is nothing new worth saving, so the stop is
    immediate: the handler raises `Interrupted` out of Python code, and when the
    main thread sits in a long C call instead (an XLA compile runs no Python
    signal handler until it returns, which can be minutes) a watcher thread,
    woken through `signal.set_wakeup_fd`, ends the process after `grace`
    seconds: env workers terminated, `on_hard_exit` run, exit status 128+signal.
    """

    def __init__(self, grace: float = 3.0, say=None):
        self.grace = float(grace)
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.signal: str | None = None
        self.phase: str | None = None
        self.starting = True  # False once the training loop runs (then a signal between phases waits for it)
        self.on_hard_exit = lambda: None
        self._previous: dict = {}
        self._pipe = None
        self._old_fd = -1

    def __bool__(self) -> bool:
        return self.signal is not None

    def set_phase(self, phase: str | None) -> None:
        if phase is not None and self.signal is not None:
            if self.starting:
                raise Interrupted(self.signal, phase)  # a signal came between two start-up phases
            return  # in the loop: its own stop check saves and stops
        self.phase = phase

    def _handler(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT and self.phase is None:
            raise KeyboardInterrupt  # a second Ctrl-C in the loop stops at once
        self.signal = signal.Signals(signum).name
        if self.phase is not None:
            raise Interrupted(self.signal, self.phase)

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 16)
            except OSError:
                return
            if not data:
                os.close(read_fd)
                return
            signum = data[-1]
            if signum not in (signal.SIGINT, signal.SIGTERM):
                continue
            deadline = time.monotonic() + self.grace
            while time.monotonic() < deadline:  # the main thread's handler gets the first chance
                time.sleep(0.05)
                if self.phase is None:
                    break
            phase = self.phase
            if phase is None:
                continue  # in the loop (or already stopping): it saves and ends by itself
            name = signal.Signals(signum).name
            self.say(f"Stopped by {name} while: {phase} (no Python code ran for {self.grace:.0f} s, so the process "
                     "ends now). Nothing trained since the last checkpoint was lost; rerun the same command to "
                     "start or resume.")
            for child in multiprocessing.active_children():  # the env workers
                child.terminate()
            try:
                self.on_hard_exit()
            finally:
                os._exit(128 + signum)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True, name="stop-signals").start()
        return self

    def __exit__(self, *exc):
        if self._pipe is None:
            return False
        signal.set_wakeup_fd(self._old_fd)
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        os.close(self._pipe[1])  # the watcher reads EOF and ends
        self._pipe = None
        return False


# ---------------------------------------------------------------------------
# Pieces the loop is built from (module-level so tools and tests can reuse them).


def make_envs(config: Config):
    from dreamer_rodent.parallel import BatchEnv

    # With run.collect_ahead a collector thread steps in-process envs: they get a thread of their own, so that
    # every call reaches them (and their EGL context) on the same one.
    return BatchEnv(config, own_thread=int(config.run.collect_ahead) > 0)


def make_agent(obs_space, act_space, config: Config, mesh):
    from dreamer_rodent.agent import Agent, with_task_keys

    return Agent(obs_space, act_space, with_task_keys(config, obs_space), mesh=mesh)


def replay_step_bytes(obs_space, act_space) -> int:
    """Bytes one stored step takes (every non-log observation key plus the action)."""
    spaces = list(obs_space.values()) + [act_space["action"]]
    return sum(int(np.prod(s.shape, dtype=np.int64)) * s.dtype.itemsize for s in spaces)


def check_replay_memory(obs_space, act_space, config: Config, say=print) -> None:
    """A replay that cannot fit in RAM is an error now, not an out-of-memory kill hours later."""
    # The replay grows to the capacity or to the run's length, whichever is smaller.
    per_step = replay_step_bytes(obs_space, act_space)
    if config.replay.get("context", False):  # float16 deter, uint8 stoch indices and a valid flag per step
        per_step += 2 * int(config.agent.rssm.deter) + int(config.agent.rssm.stoch) + 1
    need = per_step * int(min(config.replay.capacity, config.run.steps))
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        ram = 0
    gib = 2**30
    if ram and need > 0.9 * ram:
        fit = int(0.5 * ram / per_step)
        raise ConfigError(
            f"replay.capacity={int(config.replay.capacity):,} steps (run.steps={int(config.run.steps):,}) needs "
            f"{need / gib:.1f} GiB when full, but this "
            f"machine has {ram / gib:.1f} GiB of RAM. Use --replay.capacity {fit:.1e} (half the RAM) or less."
        )
    if ram and need > 0.5 * ram:
        say(f"Note: the replay will hold {need / gib:.1f} GiB when full ({ram / gib:.1f} GiB of RAM here).")


def replayed_per_update(batch_size: int, length: int, mesh) -> float:
    """Replayed steps of this host's own data in one update, for the train ratio.

    `batch_size` is the global batch. Each host samples from its own replay and
    the mesh takes the rows of its local devices from it, so with several hosts
    one update replays `batch_size / hosts` of each host's sequences. Counting the
    whole global batch against one host's env steps would train `hosts` times
    less often than `run.train_ratio` says.
    """
    share = 1.0
    if mesh is not None:
        local = len(getattr(mesh, "local_devices", ())) or mesh.devices.size
        share = local / mesh.devices.size
    return float(batch_size) * float(length) * share


def resume_env_seeds(seed: int, env_steps: int, num: int, process_index: int = 0) -> list[int]:
    """One task seed per env for a run resumed at `env_steps` (deterministic, distinct per env and host)."""
    sequence = np.random.SeedSequence([int(seed), int(env_steps), int(process_index)])
    return [int(x) for x in sequence.generate_state(num, np.uint32)]


def _finite(metrics) -> bool:
    """False if a loss, gradient, update or parameter norm of this update is NaN or inf.

    Norms after the update matter too: a finite loss can still produce an update
    that overflows the parameters, and every later loss would then be NaN.
    """
    for key, value in metrics.items():
        value = np.asarray(value)
        if value.size == 1 and np.issubdtype(value.dtype, np.floating) and not np.isfinite(value):
            if any(word in key for word in ("loss", "grad", "update_norm", "param_norm")) or key.endswith("/total"):
                return False
    return True


class Trainer:
    """The training loop and the state it checkpoints."""

    def __init__(self, config: Config, rundir: pathlib.Path, mesh, resume_from=None, process_index: int = 0,
                 say=print, stop: StopSignals | None = None):
        self.config = config
        self.stop = stop
        self.rundir = rundir
        self.mesh = mesh
        self.process_index = process_index
        self.say = say
        self.batch_size = int(config.batch_size)
        self.length = int(config.batch_length)
        self.counters = {"env_steps": 0, "train_steps": 0, "episodes": 0, "train_start": int(config.run.prefill),
                         "nonfinite": 0}
        self.saver = ckpt.Checkpointer(rundir, int(config.run.keep_checkpoints))
        # replay.context: each replayed row comes with the step before it, whose stored latent starts the row.
        self.context = bool(config.replay.context)
        self.replay = Replay(self.length + int(self.context), int(config.replay.capacity), int(config.replay.chunk),
                             seed=int(config.seed), online=bool(config.replay.online))
        self.envs = None
        self.logger = None
        self._curriculum: list = []
        self.alarm = ExploitationAlarm(say)
        # run.eval_every: the deterministic policy on fixed episodes, the best checkpoint kept (periodic_eval.py).
        self.evaluator = PeriodicEval(config, make_env) if float(config.run.eval_every) > 0 else None
        self._evaluated = False
        self._saved_step = -1  # env step of this process's last checkpoint
        try:
            where = "in this process" if config.run.env_parallel == "none" else "one worker process each"
            with self.phase(f"Building {int(config.run.envs)} env{'s' if int(config.run.envs) > 1 else ''} of "
                            f"{config.task} ({where})"):
                self.envs = make_envs(config)
            self.obs_space = {k: v for k, v in self.envs.obs_space.items() if not k.startswith("log/")}
            self.act_space = {k: v for k, v in self.envs.act_space.items() if k != "reset"}
            check_replay_memory(self.obs_space, self.act_space, config, say)
            with self.phase("Building the agent"):
                self.agent = make_agent(self.obs_space, self.act_space, config, mesh)
            self.driver = Driver(self.envs, seed=int(config.seed) * 7919 + 1 + process_index)
            self.resumed = None
            if resume_from is not None:
                self._resume()
            elif config.run.from_checkpoint:
                self._warm_start(config.run.from_checkpoint)
            if (self.resumed is not None or process_index > 0) and hasattr(self.envs, "reseed"):
                # Envs are built with seeds `seed * env.seed_stride + local index`. A resume reseeds them from
                # the step reached, or every resume would replay the spawns and targets of the run's first
                # episodes; every host but the first reseeds too, or all hosts would draw the same episodes.
                self.envs.reseed(resume_env_seeds(int(config.seed), self.counters["env_steps"], len(self.envs),
                                                  process_index))
            if process_index > 0:
                self._own_policy_key(process_index)
            self.logger = Logger(rundir, bool(config.logging.tensorboard), float(config.logging.video_fps),
                                 process_index)
        except BaseException:
            self.close()
            raise

    def phase(self, what: str, say=None, done: str | None = None) -> Phase:
        """A start-up step that may take minutes: announced, timed, and stopped at once by a signal."""
        return Phase(what, say or self.say, watch=self.stop.set_phase if self.stop is not None else None, done=done)

    # ---- checkpoint state -------------------------------------------------

    def state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "counters": dict(self.counters),
            "rng": {"driver": self.driver.rng.bit_generator.state},
            "curriculum": self._curriculum_states(),
            "eval": self.evaluator.state_dict() if self.evaluator is not None else None,
            "obs_space": {k: v.to_dict() for k, v in self.obs_space.items()},
            "act_space": {k: v.to_dict() for k, v in self.act_space.items()},
            "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def _curriculum_states(self) -> list:
        """The envs' curriculum states; the last known ones if the workers cannot answer.

        A SIGTERM sent to the whole process group (SLURM does this) may take the
        env workers down while this process is saving; the checkpoint must still
        be written, so it keeps the states read at the last log interval.
        """
        try:
            self._curriculum = list(self.envs.curriculum_states())
        except Exception as error:  # noqa: BLE001 - any worker failure is handled the same way
            warnings.warn(f"could not read the envs' curriculum states ({error}); saving the last known ones.",
                          stacklevel=2)
        return self._curriculum

    def save(self) -> pathlib.Path | None:
        if self.process_index != 0:
            return None
        start = time.monotonic()
        arrays = self.agent.save()
        if self.counters["nonfinite"] == 0:
            self._good = arrays
        path = self.saver.save(self.counters["env_steps"], arrays, self.state(), self.config, self.replay)
        self._saved_step = self.counters["env_steps"]
        if self.logger is not None:
            self.logger.scalars(self.counters["env_steps"], {"checkpoint/seconds": time.monotonic() - start})
        return path

    def _resume(self) -> None:
        # A damaged checkpoint (any file, even one matching its manifest that does not parse) is moved aside with
        # a warning line and the previous one is used; with none left, the CheckpointError is the `error:` line.
        loaded = self.saver.load_latest(warn=lambda message: print(f"warning: {message}", file=sys.stderr,
                                                                   flush=True))
        if loaded is None:
            return
        ckpt.check_compatible(loaded.config, self.config, loaded.path)
        ckpt.check_arrays(loaded.arrays, self.agent.save(), loaded.path)
        self.agent.load(loaded.arrays)
        state = loaded.state
        self.counters.update({k: int(v) for k, v in state["counters"].items()})
        self.driver.rng.bit_generator.state = state["rng"]["driver"]
        curriculum = list(state.get("curriculum") or [])
        if curriculum and any(s is not None for s in curriculum):
            if len(curriculum) != len(self.envs):
                warnings.warn(
                    f"the checkpoint has curriculum states for {len(curriculum)} envs, this run has "
                    f"{len(self.envs)}; reusing them in turn.", stacklevel=2)
                curriculum = [curriculum[i % len(curriculum)] for i in range(len(self.envs))]
            self.envs.load_curriculum_states(curriculum)
            self._curriculum = curriculum
        loaded.load_replay(self.replay)
        if self.evaluator is not None:
            note = self.evaluator.load_state_dict(self.saver.best_record())
            if note:
                self.say(f"Note: {note}")
        self.resumed = loaded
        self._saved_step = self.counters["env_steps"]
        self.say(
            f"Resumed from {loaded.path} at env step {self.counters['env_steps']} "
            f"(train step {self.counters['train_steps']}, {self.counters['episodes']} episodes, "
            f"replay {len(self.replay)} steps, curriculum {_levels(curriculum)})."
        )

    def _own_policy_key(self, process_index: int) -> None:
        """Every host's agent starts from the same seed (and a resume loads host 0's key): give this host its
        own action-noise key, or the hosts would explore with the same noise sequence."""
        arrays = self.agent.save()
        key = arrays.get("policy_key")
        if key is None:
            return
        import jax

        key = np.asarray(jax.random.fold_in(jax.numpy.asarray(key), int(process_index)))
        self.agent.load(dict(arrays, policy_key=key.astype(arrays["policy_key"].dtype)))

    def _warm_start(self, path) -> None:
        loaded = ckpt.load(path)
        ckpt.check_arrays(loaded.arrays, self.agent.save(), loaded.path)
        self.agent.load(loaded.arrays)
        self.say(f"Warm start: agent weights from {loaded.path} (step {loaded.step}); counters and replay start fresh.")

    # ---- the loop ---------------------------------------------------------

    def run(self, stop_flag) -> str:
        """Trains until run.steps env steps or a stop; returns why it stopped."""
        import jax

        config = self.config
        total = int(config.run.steps)
        per_train = replayed_per_update(self.batch_size, self.length, self.mesh)
        ratio = float(config.run.train_ratio)
        streams = [self.process_index * len(self.envs) + i for i in range(len(self.envs))]
        progress = Progress(total, self.counters["env_steps"], bool(config.run.progress) and self.process_index == 0,
                            plain_every=min(60.0, float(config.run.log_every)))
        self.alarm.say = progress.write  # its warning lines go above the progress bar
        if hasattr(self.envs, "say"):
            self.envs.say = progress.write  # and so do those of a restarted env worker
        averages, recent = Averages(), Recent(20)
        timers = {"log": time.monotonic(), "save": time.monotonic(), "video": time.monotonic(),
                  "eval": time.monotonic()}
        policy_time = train_time = 0.0
        policy_steps = train_steps = 0
        self._good = self.agent.save()
        if self.stop is not None:
            self.stop.starting = False
        pcarry = self.agent.init_policy(len(self.envs))
        tcarry = self.agent.init_train(self.batch_size)
        self.driver.reset()
        self.replay.end_episodes()  # the reset cut every stream's running episode
        reason = "done"

        compiled: set[str] = set()

        def first_compiled(name: str, what: str, call, done: str | None = None):
            """`call()`; the first time (an XLA compile) announced, timed and stoppable, with the steps collected
            so far (the prefill) saved before it, so that a stop during the compile loses nothing."""
            if name in compiled:
                return call()
            if self.counters["env_steps"] > self._saved_step:
                self.save()
            with self.phase(what, progress.write, done=done):
                out = jax.block_until_ready(call())
            compiled.add(name)
            return out

        def policy(obs):
            nonlocal pcarry
            if self.counters["env_steps"] < self.counters["train_start"]:
                return self.driver.random_actions()
            pcarry, act = first_compiled("policy", "Compiling the policy",
                                         lambda: self.agent.policy(pcarry, agent_obs(obs), mode="train"))
            return {"action": np.asarray(act["action"])}

        compiling_train = (f"Compiling the train step and making the first update ({self.agent_size()}; minutes for "
                           "a large model on a CPU)")

        def train(carry, batch, **kwargs):
            return first_compiled("train", compiling_train, lambda: self.agent.train(carry, batch, **kwargs),
                                  done="First update")

        def step_envs(policy_fn):
            """One env step of every env: the transition (obs t, action t, and with replay.context the policy's
            latent after seeing obs t) and the episodes that finished."""
            transition, finished = self.driver.step(policy_fn)
            transition = agent_obs(transition)
            if self.context:  # the policy's latent after seeing this step (blank during the random prefill)
                acting = collector is not None or self.counters["env_steps"] >= self.counters["train_start"]
                transition.update(self.agent.latent_record(pcarry) if acting else
                                  self.agent.latent_record(size=len(self.envs)))
            return transition, finished

        # run.collect_ahead: once the policy and the train step are compiled, a thread steps the envs (with a
        # parameter snapshot refreshed after each round of updates) while this one trains; see collector.py.
        ahead = int(config.run.collect_ahead)
        collector: Collector | None = None
        acting_params = {"params": None}

        def collected_policy(obs):  # on the collector thread
            nonlocal pcarry
            pcarry, act = self.agent.policy(pcarry, agent_obs(obs), mode="train", params=acting_params["params"])
            return {"action": np.asarray(act["action"])}

        def stop_collector():
            nonlocal collector
            if collector is not None:
                collector.close()
                collector = None

        def envs_borrowed():
            return collector.paused() if collector is not None else contextlib.nullcontext()

        if self.counters["env_steps"] < self.counters["train_start"]:
            progress.write(f"Collecting {self.counters['train_start'] - self.counters['env_steps']:,} random-action "
                           f"prefill steps (run.prefill) before the first update.")

        try:
            while self.counters["env_steps"] < total:
                start = time.monotonic()
                if collector is None and ahead > 0 and {"policy", "train"} <= compiled:
                    acting_params["params"] = self.agent.policy_params()
                    collector = Collector(lambda: step_envs(collected_policy), ahead)
                if collector is not None:
                    transition, finished = collector.next()
                else:
                    transition, finished = step_envs(policy)
                self.replay.add_batch(transition, streams)
                self.counters["env_steps"] += len(self.envs)
                policy_time += time.monotonic() - start
                policy_steps += len(self.envs)
                for episode in finished:
                    self.counters["episodes"] += 1
                    averages.add({"episode/score": episode["score"], "episode/length": episode["length"],
                                  "episode/success": episode["success"]})
                    for key, value in episode.items():
                        if key.startswith("curriculum_"):  # log/curriculum_level -> curriculum/level
                            averages.add({f"curriculum/{key[len('curriculum_'):]}": value})
                        elif key not in ("env", "score", "length", "success"):
                            averages.add({f"episode/{key}": value})
                    recent.add("score", episode["score"])
                    recent.add("success", episode["success"])

                steps = self.counters["env_steps"]
                if steps >= self.counters["train_start"] and self.replay.can_sample():
                    target = (steps - self.counters["train_start"]) * ratio / per_train
                    start = time.monotonic()
                    round_start = self.counters["train_steps"]
                    while self.counters["train_steps"] < target:
                        batch = self.replay.sample(self.batch_size)
                        if self.context:
                            context = {k: v[:, 0] for k, v in batch.items()}
                            tcarry, metrics = train(tcarry, {k: v[:, 1:] for k, v in batch.items()},
                                                    context=context)
                            # Refresh the stored latents with this update's posteriors (DreamerV3 v2).
                            self.replay.write(self.replay.last_positions, self.agent.posterior_record(), offset=1)
                        else:
                            tcarry, metrics = train(tcarry, batch)
                        self.counters["train_steps"] += 1
                        train_steps += 1
                        if _finite(metrics):
                            self.counters["nonfinite"] = 0
                            averages.add(metrics, prefix="train/")
                        else:
                            # The agent applies every update, so undo it: back to the last good snapshot.
                            with envs_borrowed():  # the collector's policy splits the agent's action-noise key
                                self.agent.load(self._good)
                            self.counters["nonfinite"] += 1
                            averages.add({"train/nonfinite_skipped": 1.0})
                            progress.write(
                                f"warning: non-finite loss at train step {self.counters['train_steps']} "
                                f"({self.counters['nonfinite']} in a row); the update was undone (parameters "
                                f"restored from the last good snapshot).")
                            if self.counters["nonfinite"] >= int(config.run.max_nonfinite):
                                reason = "nonfinite"
                                break
                    if collector is not None and self.counters["train_steps"] > round_start:
                        acting_params["params"] = self.agent.policy_params()  # the next steps act with these
                    train_time += time.monotonic() - start
                    if reason == "nonfinite":
                        break

                now = time.monotonic()
                # On several hosts, process 0's timers and any host's signal decide for all, so that the
                # collective calls below (report, train) stay in lockstep.
                stop, log_due, video_due, save_due, eval_due = distributed.agree([
                    stop_flag(),
                    now - timers["log"] >= float(config.run.log_every),
                    now - timers["video"] >= float(config.run.video_every) and self.replay.can_sample(),
                    now - timers["save"] >= float(config.run.save_every),
                    self.evaluator is not None and "policy" in compiled
                    and now - timers["eval"] >= float(config.run.eval_every),
                ])
                if stop:
                    reason = "signal"
                    break
                # Measured before a log resets the counters (a batch log prints its status line right after one).
                policy_fps = policy_steps / policy_time if policy_time else 0.0
                if log_due:
                    if self.counters["nonfinite"] == 0:
                        self._good = self.agent.save()  # what a non-finite update rolls back to
                    with envs_borrowed():
                        self._curriculum_states()  # also what a restarted env worker gets back
                    self._log(averages, policy_steps, policy_time, train_steps * per_train, train_time)
                    policy_time = train_time = 0.0
                    policy_steps = train_steps = 0
                    timers["log"] = now
                if video_due:
                    with envs_borrowed():
                        self._videos()
                    timers["video"] = now
                if eval_due:
                    with envs_borrowed():  # the collector's policy splits the same action-noise key
                        self._evaluate(progress.write, stop_flag)
                    timers["eval"] = time.monotonic()
                if save_due:
                    with envs_borrowed():
                        self.save()
                    timers["save"] = time.monotonic()
                progress.update(steps, policy_fps=policy_fps,
                                ret=recent.mean("score") or 0.0, success=recent.mean("success") or 0.0)
            stop_collector()  # the envs are idle from here on: the checkpoint reads their curriculum states
            self._log(averages, policy_steps, policy_time, train_steps * per_train, train_time)
            if reason == "nonfinite":
                # The bad updates were undone, so the agent holds the last good parameters.
                self.counters["nonfinite"] = 0
                path = self.save()
                self.counters["nonfinite"] = int(config.run.max_nonfinite)
                raise RunError(
                    f"{self.counters['nonfinite']} consecutive updates had a non-finite loss (run.max_nonfinite="
                    f"{config.run.max_nonfinite}); stopped at env step {self.counters['env_steps']}. The last good "
                    f"state is in {path}. Lower agent.opt.lr, check the reward scale, or run with "
                    "--jax.debug_nans True to find the source.")
            self.save()
            return reason
        except RunError:
            raise
        except Exception as error:
            stop_collector()
            if ckpt.disk_full(error):  # saving again would fail the same way: one clear line instead
                progress.close()
                if isinstance(error, ckpt.DiskFullError):
                    raise RunError(str(error)) from None
                what = getattr(error, "filename", None) or "the run's logs"
                raise RunError(ckpt.disk_full_message(self.rundir, what, self.saver.latest())) from None
            # An env worker that keeps failing, a full disk for videos, ...: keep the hours already trained.
            progress.close()
            try:
                path = self.save()
                self.say(f"Saved {path} at env step {self.counters['env_steps']} before stopping on "
                         f"{type(error).__name__}; fix the cause and rerun the same command to resume.")
            except Exception as save_error:  # noqa: BLE001 - report the original error, not this one
                self.say(f"Could not save a checkpoint after {type(error).__name__}: {save_error}")
            raise
        finally:
            stop_collector()
            progress.close()

    def agent_size(self) -> str:
        count = self.agent.param_count() if hasattr(self.agent, "param_count") else None
        return f"{count:,} parameters" if count is not None else "the agent"

    def _log(self, averages, policy_steps, policy_time, replayed, train_time) -> None:
        metrics = averages.result()
        metrics["fps/policy"] = policy_steps / policy_time if policy_time > 0 else 0.0
        metrics["fps/train"] = replayed / train_time if train_time > 0 else 0.0
        metrics["replay/size"] = len(self.replay)
        metrics["replay/bytes"] = self.replay.nbytes
        metrics["counters/train_steps"] = self.counters["train_steps"]
        metrics["counters/episodes"] = self.counters["episodes"]
        metrics["env/restarts"] = getattr(self.envs, "restarts", 0)  # env workers restarted since this process began
        gap = real_reward_gap(metrics)
        if gap is not None:
            metrics["alarm/real_reward_gap"] = gap
        metrics["alarm/exploitation"] = self.alarm.update(self.counters["env_steps"], metrics)
        self.logger.scalars(self.counters["env_steps"], metrics)

    def _evaluate(self, say, stop_flag) -> None:
        """One evaluation of the deterministic policy; a better score than any before becomes checkpoints/best."""
        if not self._evaluated:
            levels, n = self.evaluator.levels, self.evaluator.episodes
            say(f"Evaluating the deterministic policy every {self.config.run.eval_every} s: {n} episode"
                f"{'s' if n != 1 else ''}{'' if levels == [None] else f' at level(s) {levels}'} (the first one also "
                "compiles it).")
            self._evaluated = True
        result = self.evaluator.evaluate(self.agent, stop_flag)
        if result is None:
            return
        step = self.counters["env_steps"]
        best = self.evaluator.is_best(result)
        if best:
            before = (self.evaluator.best, self.evaluator.best_return, self.evaluator.best_step)
            self.evaluator.mark_best(result, step)  # first: checkpoints/best's own state records its score
            try:
                self.saver.save_best(step, self.agent.save(), self.state(), self.config)
            except BaseException:  # not kept: the next checkpoint must not claim it
                self.evaluator.best, self.evaluator.best_return, self.evaluator.best_step = before
                raise
        result.metrics["eval/best_score"] = self.evaluator.best if self.evaluator.best is not None else result.score
        self.logger.scalars(step, result.metrics)
        where = (f"new best, saved in {self.saver.directory / ckpt.BEST}" if best else
                 f"best {self.evaluator.best:.2f} at env step {self.evaluator.best_step}")
        say(f"{result.line}; {where}) at env step {step}.")

    def _videos(self) -> None:
        step = self.counters["env_steps"]
        video = self.driver.episodes.last_video
        if video is None and self.driver.episodes.frames:
            video = np.stack(self.driver.episodes.frames)
        if video is not None:
            self.logger.video(step, "rollout/image", video)
        try:
            report = self.agent.report(self.replay.sample(self.batch_size))
        except Exception as error:  # noqa: BLE001 - a failed summary must not end a long run
            warnings.warn(f"agent.report failed: {error}", stacklevel=2)
            return
        scalars = {}
        for key, value in report.items():
            value = np.asarray(value)
            if value.dtype == np.uint8 and value.ndim >= 4:  # under report/ with its scalars (openloop/image_mse)
                self.logger.video(step, f"report/{key}", value[:4] if value.ndim == 5 else value)
            elif value.size == 1:
                scalars[f"report/{key}"] = float(value.reshape(()))
        self.logger.scalars(step, scalars)

    def close(self) -> None:
        if self.logger is not None:
            try:
                self.logger.close()
            except OSError as error:  # a full disk: the stop's own message says so, this would bury it
                if not ckpt.disk_full(error):
                    raise
            self.logger = None
        if self.envs is not None:
            self.envs.close()
            self.envs = None


def _levels(states) -> str:
    levels = []
    for state in states or []:
        if isinstance(state, dict) and "level" in state:
            levels.append(state["level"])
    return f"levels {levels}" if levels else "no curriculum state"


# ---------------------------------------------------------------------------
# Entry point.


def train(argv: Sequence[str]) -> str:
    """Parses flags, checks everything, then trains. Raises on bad input."""
    gl_backend.check()  # before anything imports dm_control (the task registry), which would fail inside PyOpenGL
    config, _ = parse_args(argv)
    check_config(config)
    for note in config_warnings(config):
        print(f"warning: {note}", file=sys.stderr, flush=True)
    # optax's own deprecation notices fire on every trace and bury the run's output.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"optax")
    several = distributed.multihost_settings(config)
    if several is not None and int(config.run.collect_ahead) > 0:
        # The policy is a computation over every host's devices; a collector thread would issue it in an order
        # the other hosts do not share.
        raise ConfigError(f"run.collect_ahead={config.run.collect_ahead} is for one process; this run has "
                          f"{several.num_processes} (jax.distributed): drop --run.collect_ahead.")
    if several is not None and float(config.run.eval_every) > 0:
        # The same: one host's evaluation episodes would call the policy, a computation over every host's devices,
        # while the others do not.
        raise ConfigError(f"run.eval_every={config.run.eval_every} is for one process; this run has "
                          f"{several.num_processes} (jax.distributed): drop --run.eval_every and evaluate "
                          "checkpoints with python -m dreamer_rodent.eval.")
    hosts = distributed.setup(config)
    mesh = distributed.make_mesh(config)  # also checks batch_size against the devices
    import jax

    process_index = jax.process_index()
    config_logdir_given = bool(config.logdir) and "{timestamp}" not in str(config.logdir)  # else say how to resume
    rundir = resolve_logdir(config)
    saved = saved_config(rundir)
    config, cpu_note = choose_model_size(argv, config, mesh.devices.flat[0].platform, saved)
    if cpu_note:
        check_config(config)
        mesh = distributed.make_mesh(config)
    check_writable(rundir)
    resume_from = find_resume(rundir, config, int(config.run.keep_checkpoints))
    if config.run.from_checkpoint and resume_from is None:
        ckpt.find(config.run.from_checkpoint)  # a wrong path fails now, before anything is written
    config = config.update({"logdir": str(rundir)})
    if config.task_module:  # a file made absolute: eval and a resume from another directory find it too
        from tasks import registry

        config = config.update({"task_module": registry.module_path(str(config.task_module))})

    created = not rundir.exists()
    rundir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(rundir) if process_index == 0 else None  # other hosts share the directory
    stop = StopSignals()

    def hard_exit():  # a start-up the watcher ended inside a compile: leave no half-made run directory
        if created and process_index == 0 and not (rundir / "config.yaml").exists():
            shutil.rmtree(rundir, ignore_errors=True)

    stop.on_hard_exit = hard_exit
    trainer = None
    try:
        stop.__enter__()
        print(f"Run directory: {rundir}", flush=True)
        print(f"Watch it with: tensorboard --logdir {rundir}   (or: tail -f {rundir / 'metrics.jsonl'})", flush=True)
        if not config_logdir_given:
            print(f"To resume it later, rerun with --logdir {rundir}", flush=True)
        devices = mesh.devices.size
        hostinfo = f", process {hosts.process_id}/{hosts.num_processes} via {hosts.source}" if hosts else ""
        print(f"Devices: {devices} x {mesh.devices.flat[0].platform} on mesh axis 'data'{hostinfo}.", flush=True)
        for note in ([cpu_note] if cpu_note else []) + platform_notes(config, mesh.devices.flat[0].platform):
            print(f"Note: {note}", flush=True)
        if resume_from is None:
            print("Starting a new run." if not config.run.from_checkpoint else "Starting a new run (warm start).",
                  flush=True)
        else:
            for note in task_changes(saved, config):
                print(f"Note: {note}", flush=True)
            if config.run.from_checkpoint:
                print(f"Note: run.from_checkpoint is ignored, this run resumes its own checkpoint ({resume_from}).",
                      flush=True)
        try:
            trainer = Trainer(config, rundir, mesh, resume_from=resume_from, process_index=process_index, stop=stop)
        except BaseException:
            if created and process_index == 0:  # leave no half-made run directory behind
                if lock is not None:
                    lock.release()
                    lock = None
                shutil.rmtree(rundir, ignore_errors=True)
            raise
        if process_index == 0:
            config.save(rundir / "config.yaml")  # only once env, agent and checkpoint all fit
        params = trainer.agent.param_count() if hasattr(trainer.agent, "param_count") else None
        if params is not None:
            print(f"Agent parameters: {params:,}.", flush=True)
        reason = trainer.run(lambda: bool(stop))
        steps = trainer.counters["env_steps"]
        if reason == "signal":
            again = "the same command" if config_logdir_given else f"with --logdir {rundir}"
            print(f"Stopped by {stop.signal} at env step {steps}; checkpoint saved. Rerun {again} to resume.",
                  flush=True)
        else:
            updates = trainer.counters["train_steps"]
            print(f"Finished {steps} env steps ({updates} updates); checkpoint saved in {trainer.saver.latest()}.",
                  flush=True)
            print(f"Evaluate it with: python -m dreamer_rodent.eval --checkpoint {rundir}", flush=True)
            evaluator = trainer.evaluator
            if evaluator is not None and evaluator.best is not None:
                print(f"The best evaluation (score {evaluator.best:.2f} at env step {evaluator.best_step}) is "
                      f"{trainer.saver.directory / ckpt.BEST}: evaluate it on other episodes (eval --seed) before "
                      "reporting it.", flush=True)
        return reason
    finally:
        if trainer is not None:
            trainer.close()
        stop.__exit__(None, None, None)
        if lock is not None:
            lock.release()


def platform_notes(config: Config, platform: str) -> list[str]:
    """One line when a GPU-sized config is about to run on a CPU (it compiles for minutes, then crawls)."""
    deter, units = int(config.agent.rssm.deter), int(config.agent.units)
    if platform != "cpu" or deter < 1024:
        return []
    return [f"this run is on the CPU, and its model is sized for a GPU (agent.rssm.deter={deter}, agent.units="
            f"{units}): the first compile takes minutes and every update seconds. For a CPU run that learns, "
            f"add --configs cpu_small proprio_only (as in the README)."]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 with a one-paragraph error on bad input."""
    from dreamer_rodent.parallel import EnvWorkerError
    from tasks.registry import TaskConfigError, UnknownTaskError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        wants_help, prefix = cli_help.help_request(argv)
        if wants_help:
            print(cli_help.train_help(prefix), end="", flush=True)
            print(cli_help.task_settings_help(cli_help.flag_value(argv, "--task"),
                                              cli_help.flag_value(argv, "--task_module")), end="", flush=True)
            return 0
        train(argv)
    except Interrupted as stopped:  # before the loop: nothing new to save, and nothing half-made was left
        print(f"Stopped by {stopped.signame} while: {stopped.phase}. Nothing was trained since the last "
              "checkpoint; rerun the same command to start or resume.", file=sys.stderr, flush=True)
        return 128 + int(signal.Signals[stopped.signame])
    # TaskConfigError: a task or walker setting a factory refused (e.g. a wrong env.camera) with in-process envs.
    except (ConfigError, ckpt.CheckpointError, UnknownTaskError, TaskConfigError, RunError, EnvWorkerError,
            gl_backend.GLBackendError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    except OSError as error:  # a full disk outside the loop (the run directory's config, the logs' first line)
        if not ckpt.disk_full(error):
            raise
        print(f"error: no space left on the disk while writing {error.filename or 'the run directory'}. Free "
              "space on that disk, or pass a --logdir on a larger one, then rerun the same command.",
              file=sys.stderr, flush=True)
        return 2
    return 0


def cli() -> int:
    """The command (`python -m ...` and the console script): `main` in a process whose allocator uses huge pages."""
    host_memory.use_huge_pages()  # executes this command again, once, with GLIBC_TUNABLES set (dreamer_rodent/host_memory.py)
    return main()


if __name__ == "__main__":
    sys.exit(cli())

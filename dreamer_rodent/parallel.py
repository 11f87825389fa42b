"""A batch of env workers stepped as one: `BatchEnv`.

The policy acts on all envs at once, so the runtime wants one call that takes
actions `[N, ...]` and returns observations `[N, ...]`. Rodent envs spend most
of their time in MuJoCo and the renderer, so each env runs in its own process
(started with 'spawn': forking a process that has initialised EGL/GL is unsafe)
and the batch is stepped in parallel. Observation arrays come back through
shared memory (one block per key, one row per worker); only small control
messages and actions go through pipes.

Failure handling, so that a long run never hangs on one bad env:
- a Python exception inside a worker stops the run with `EnvWorkerError`
  naming the worker index and carrying the worker's traceback;
- a worker that dies (signal, segfault, out of memory) or does not answer
  within `step_timeout` is restarted; the episode it was running is reported as
  ended (`is_last=True`, not terminal) and its next observation starts a new
  episode (`is_first=True`). After `max_restarts` restarts of the same worker
  the run stops with `EnvWorkerError` naming the worker and the cause. Each
  restart prints one `warning:` line (`BatchEnv.say`, stderr by default) and
  counts in `BatchEnv.restarts` (the trainer logs it as `env/restarts`).

In-process envs (`env_parallel: none`) can be given a thread of their own
(`own_thread=True`, what `run.collect_ahead` uses): every call on them, their
construction and close included, then runs on that one thread, because a
MuJoCo EGL context stays current on the thread that first rendered with it
and dm_control refuses to render with it from any other.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from multiprocessing import shared_memory
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dreamer_rodent.config import Config, ConfigError
from dreamer_rodent.egl import egl_device_for
from dreamer_rodent.spaces import Space

EnvCtor = Callable[[Config, int], Any]


class EnvWorkerError(RuntimeError):
    """An env worker failed; the message names the worker index and the cause."""

    def __init__(self, index: int, cause: str):
        self.index = index
        self.cause = cause
        super().__init__(f"env worker {index} failed: {cause}")


# --------------------------------------------------------------------------
# Worker process.


def default_env_ctor(config: Config, index: int):
    """Builds env `index` of a run with the project's adapter."""
    from dreamer_rodent.env import make_env

    return make_env(config, index=index)


class _SharedBatch:
    """One shared-memory block per observation key, holding `[N, *shape]`."""

    def __init__(self, spaces: Mapping[str, Space], num: int, names: Mapping[str, str] | None = None):
        self.spaces = dict(spaces)
        self.blocks: dict[str, shared_memory.SharedMemory] = {}
        self.views: dict[str, np.ndarray] = {}
        self.owner = names is None
        for key, space in self.spaces.items():
            size = max(1, num * _nbytes(space))
            if names is None:
                block = shared_memory.SharedMemory(create=True, size=size)
            else:
                block = _attach_shm(names[key])
            self.blocks[key] = block
            self.views[key] = np.ndarray((num, *space.shape), space.dtype, buffer=block.buf)

    @property
    def names(self) -> dict[str, str]:
        return {key: block.name for key, block in self.blocks.items()}

    def close(self):
        self.views.clear()
        for block in self.blocks.values():
            try:
                block.close()
                if self.owner:
                    block.unlink()
            except (FileNotFoundError, BufferError):
                pass
        self.blocks.clear()


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _nbytes(space: Space) -> int:
    return int(np.prod(space.shape, dtype=np.int64)) * space.dtype.itemsize


def shm_shortfall(needed: int, path: str = "/dev/shm") -> str | None:
    """Why `needed` bytes of shared memory will not fit, or None if they will.

    Checked up front because writing into a full /dev/shm kills the writer
    with SIGBUS instead of raising an error.
    """
    try:
        stats = os.statvfs(path)
    except OSError:
        return None  # No /dev/shm to inspect (not Linux); let the OS decide.
    free = stats.f_bavail * stats.f_frsize
    if needed <= free:
        return None
    return (
        f"BatchEnv needs {needed / 2**20:.1f} MiB of shared memory for its observations but {path} has "
        f"{free / 2**20:.1f} MiB free; enlarge it (docker run --shm-size=1g, or --ipc=host) or use fewer "
        f"envs or smaller images"
    )


# With more envs than this, one env is built first and measured, and the rest only if they fit in memory.
MEASURE_ABOVE = 4


def process_memory(pid="self") -> int | None:
    """Bytes a process holds: its proportional share (Pss, shared pages split) where Linux says, else RSS."""
    for name, field in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                for line in f:
                    if line.startswith(field):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return None


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup (Docker, SLURM) limit."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for folder, limit, usage, cache in (("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
                                        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
                                         "total_inactive_file")):
        try:
            with open(f"{folder}/{limit}") as f, open(f"{folder}/{usage}") as g:
                text, used = f.read().strip(), int(g.read().strip())
            if text == "max" or int(text) >= 2**60:
                continue
            # Page cache the kernel reclaims (checkpoints and replay just written) is not in use.
            with open(f"{folder}/memory.stat") as f:
                stats = dict(line.split() for line in f if len(line.split()) == 2)
            used -= int(stats.get(cache, 0))
            found.append(max(0, int(text) - used))
        except (OSError, ValueError):
            continue
    return min(found) if found else None


def env_memory_problem(per_env: int | None, num: int, built: int, available: int | None) -> str | None:
    """Why `num` envs of `per_env` bytes each will not fit when `built` of them exist, or None."""
    if not per_env or available is None:
        return None
    need = per_env * (num - built)
    if need <= 0.5 * available:  # the other half for the replay, the agent and its compilation
        return None
    fit = built + int(0.4 * available / per_env)
    return (f"run.envs={num} will not fit in memory: one env of this task takes about {per_env / 2**20:.0f} MiB "
            f"(measured on the first one built), so {num} need about {per_env * num / 2**30:.1f} GiB, and "
            f"{available / 2**30:.1f} GiB is available (half of it is kept for the replay and the agent). Use --run.envs {max(1, fit)} or fewer (more envs than "
            f"cores also only take turns on them: this machine has {os.cpu_count()}).")


def _attach_shm(name: str) -> shared_memory.SharedMemory:
    """Attaches to a block the parent owns and unlinks.

    Spawned workers share the parent's resource tracker, where the block is
    already registered (registering again is a no-op), so a worker must not
    unregister it: the parent's unlink does.
    """
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        return shared_memory.SharedMemory(name=name)


def _worker_main(index: int, ctor: EnvCtor, config_dict: dict, conn) -> None:
    """Builds one env and serves requests from the parent until 'close'."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle.
    shared = None
    env = None
    try:
        env = ctor(Config(config_dict), index)
        obs_space, act_space = dict(env.obs_space), dict(env.act_space)
        conn.send(("ready", (obs_space, act_space, os.getpid())))
        while True:
            try:
                command, payload = conn.recv()
            except (EOFError, OSError):
                break  # The parent is gone.
            if command == "step":
                obs = env.step(payload)
                if shared is not None:  # The parent attached shared memory; else all goes by pipe.
                    extras = {}
                    for key, value in obs.items():
                        if key in shared.views:
                            value = np.asarray(value)
                            space = obs_space[key]
                            if value.shape != space.shape or value.dtype != space.dtype:
                                raise ValueError(
                                    f"observation '{key}' has shape {value.shape} and dtype {value.dtype}, but "
                                    f"obs_space declares {space.shape} {space.dtype}; fix the env adapter or the task."
                                )
                            shared.views[key][index] = value
                        else:
                            extras[key] = value
                    missing = set(shared.views) - set(obs)
                    if missing:
                        raise KeyError(f"observation lacks keys {sorted(missing)} that obs_space declares.")
                    conn.send(("obs", extras))
                else:
                    conn.send(("obs", obs))
            elif command == "attach":
                shared = _SharedBatch(obs_space, payload["num"], payload["names"])
                conn.send(("ok", None))
            elif command == "call":
                name, args = payload
                conn.send(("ok", getattr(env, name)(*args)))
            elif command == "close":
                break
            else:
                raise ValueError(f"unknown command '{command}'")
    except Exception:  # noqa: BLE001 - every failure goes to the parent with its traceback.
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:  # noqa: BLE001
            pass
    finally:
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001
                pass
        if shared is not None:
            shared.close()
        try:
            conn.send(("closed", None))
        except Exception:  # noqa: BLE001
            pass
        conn.close()


# --------------------------------------------------------------------------
# The batch.


class BatchEnv:
    """N envs stepped as one batch; in worker processes or in this process.

    `obs_space` and `act_space` are the spaces of one env. `step(actions)` takes
    a dict of arrays `[N, ...]` with the keys of `act_space` and returns a dict
    of fresh arrays `[N, ...]` (the caller owns them) with the keys of
    `obs_space`; env i is `ctor(config, i)`, seeded by its index. Each call
    waits for all envs. A restarted worker shows up as one row with
    `is_last=True` and then `is_first=True`; `restart_log` lists the causes,
    `restarts` counts them and `say(line)` reports each one as it happens.
    """

    def __init__(
        self,
        config: Config,
        num: int | None = None,
        parallel: str | None = None,
        ctor: EnvCtor = default_env_ctor,
        transport: str = "shm",
        step_timeout: float = 120.0,
        start_timeout: float = 600.0,
        max_restarts: int = 5,
        own_thread: bool = False,
    ):
        """`num` defaults to `config.run.envs`, `parallel` to `config.run.env_parallel`
        ('process' or 'none'). `ctor(config, index)` builds env `index` (in the
        worker, so it must be picklable: a module-level function). `own_thread`
        (in-process envs only): every env call runs on one dedicated thread."""
        self._config = config
        self._num = int(config.run.envs if num is None else num)
        self._parallel = str(config.run.env_parallel if parallel is None else parallel)
        if self._num < 1:
            raise ValueError(f"BatchEnv needs at least one env, got run.envs={self._num}.")
        if self._parallel not in ("process", "none"):
            raise ValueError(f"run.env_parallel must be 'process' or 'none', got '{self._parallel}'.")
        if transport not in ("shm", "pipe"):
            raise ValueError(f"transport must be 'shm' or 'pipe', got '{transport}'.")
        self._ctor = ctor
        self._transport = transport
        self._step_timeout = float(step_timeout)
        self._start_timeout = float(start_timeout)
        self._max_restarts = int(max_restarts)
        self._closed = False
        self._envs: list = []
        self._procs: list = [None] * self._num
        self._conns: list = [None] * self._num
        self._pids: list = [None] * self._num
        self._shared: _SharedBatch | None = None
        self._last_obs: list[dict | None] = [None] * self._num
        self._force_reset = np.zeros(self._num, bool)
        self._restarts = [0] * self._num
        self._curriculum_cache: list = [None] * self._num
        self.restart_log: list[tuple[int, str]] = []  # (worker index, cause) of each restart
        self.say: Callable[[str], None] = _to_stderr  # where a restart's warning line goes
        self._thread = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="envs")
                        if own_thread and self._parallel == "none" else None)
        # A signal during the build interrupts only the wait below; the env being built finishes on its thread.
        self._thread_ident = self._thread.submit(threading.get_ident).result() if self._thread else None

        if self._parallel == "none":
            try:
                for i in range(self._num):
                    before = process_memory() if i == 1 and self._num > MEASURE_ABOVE else None
                    self._envs.append(self._in_envs_thread(ctor, config, i))
                    if before is not None:  # env 1, not env 0: the first one also pays for importing dm_control
                        after = process_memory()
                        self._check_memory(after - before if after is not None else None, 2)
            except BaseException:
                self.close()
                raise
            self.obs_space = dict(self._envs[0].obs_space)
            self.act_space = dict(self._envs[0].act_space)
            return

        self._context = multiprocessing.get_context("spawn")
        self._config_dict = config.to_dict()
        try:
            first = [0] if self._num > MEASURE_ABOVE else list(range(self._num))
            for i in first:
                self._start(i)
            spaces = [self._await_ready(i) for i in first]
            if len(first) < self._num:
                self._check_memory(process_memory(self._pids[0]), 1)
                for i in range(1, self._num):
                    self._start(i)
                spaces += [self._await_ready(i) for i in range(1, self._num)]
            self.obs_space, self.act_space = spaces[0]
            for i, (obs_space, act_space) in enumerate(spaces[1:], 1):
                self._check_spaces(i, obs_space, act_space)
            if self._transport == "shm":
                shortfall = shm_shortfall(self._num * sum(_nbytes(space) for space in self.obs_space.values()))
                if shortfall:
                    warnings.warn(f"{shortfall}. Falling back to pipes for observations (slower for large images).")
                    self._transport = "pipe"
            if self._transport == "shm":
                self._shared = _SharedBatch(self.obs_space, self._num)
                for i in range(self._num):
                    self._attach(i)
        except BaseException:
            self.close()
            raise

    def _check_memory(self, per_env: int | None, built: int) -> None:
        problem = env_memory_problem(per_env, self._num, built, available_memory())
        if problem:
            raise ConfigError(problem)

    # ---- public API ----

    @property
    def num(self) -> int:
        return self._num

    def __len__(self) -> int:
        return self._num

    @property
    def restarts(self) -> int:
        """Workers restarted so far (deaths and hangs), all workers together."""
        return len(self.restart_log)

    @property
    def worker_pids(self) -> list[int | None]:
        """Process ids of the workers (None in-process), e.g. for monitoring."""
        return list(self._pids)

    def step(self, actions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError("BatchEnv.step() after close().")
        actions = self._check_actions(actions)
        if self._force_reset.any() and "reset" in actions:
            actions["reset"] = actions["reset"] | self._force_reset
            self._force_reset[:] = False
        if self._parallel == "none":
            return self._stack(self._in_envs_thread(self._step_in_process, actions))
        for i in range(self._num):
            self._send(i, "step", {k: v[i] for k, v in actions.items()})
        failed: dict[int, str] = {}
        replies = self._collect(range(self._num), failed)
        if self._transport == "shm":
            # One copy per key of the whole batch; pipe extras (keys outside
            # obs_space) are stacked from the replies.
            batch = {k: view.copy() for k, view in self._shared.views.items()}
            extra_keys = set().union(*(payload.keys() for _, payload in replies.values())) if replies else set()
            for i, (_, extras) in replies.items():
                row = {k: v[i].copy() for k, v in batch.items()}  # kept apart from the caller's arrays
                row.update(extras)
                self._last_obs[i] = row
        else:
            for i, (_, payload) in replies.items():
                self._last_obs[i] = payload
        for i, cause in sorted(failed.items()):
            self._last_obs[i] = self._recover(i, cause, actions)
        if self._transport == "shm" and not failed and not extra_keys:
            return batch
        return self._stack(self._last_obs)

    def _step_in_process(self, actions) -> list[dict]:
        rows = []
        for i, env in enumerate(self._envs):
            try:
                rows.append(env.step({k: v[i] for k, v in actions.items()}))
            except Exception as error:  # the same error type as from a worker process
                raise EnvWorkerError(i, f"exception in the env while stepping:\n{traceback.format_exc()}") from error
        return rows

    def _in_envs_thread(self, fn, *args):
        """fn(*args) on the envs' own thread if they have one, else here (also when already on it: a __del__
        that the thread's last reference triggers must not wait for itself)."""
        thread = getattr(self, "_thread", None)  # None also in a close() from a failed __init__
        if thread is None or threading.get_ident() == getattr(self, "_thread_ident", None):
            return fn(*args)
        return thread.submit(fn, *args).result()

    def curriculum_states(self) -> list:
        """Each env's curriculum state (plain data), in worker order."""
        states = self._call_all("curriculum_state")
        self._curriculum_cache = list(states)
        return states

    def load_curriculum_states(self, states: Sequence) -> None:
        """Restores one state per env, e.g. after resuming from a checkpoint."""
        states = list(states)
        if len(states) != self._num:
            raise ValueError(
                f"load_curriculum_states got {len(states)} states for {self._num} envs; "
                f"resume with the same run.envs as the checkpoint or pass one state per env."
            )
        self._call_all("load_curriculum_state", [(s,) for s in states])
        self._curriculum_cache = states

    def reseed(self, seeds: Sequence[int]) -> None:
        """Reseeds each env's task random state (one seed per env), e.g. when a run resumes."""
        seeds = [int(s) for s in seeds]
        if len(seeds) != self._num:
            raise ValueError(f"reseed got {len(seeds)} seeds for {self._num} envs.")
        self._call_all("reseed", [(s,) for s in seeds])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for env in self._envs:
                self._in_envs_thread(env.close)
        finally:
            if getattr(self, "_thread", None) is not None:
                self._thread.shutdown(wait=threading.get_ident() != getattr(self, "_thread_ident", None))
                self._thread = None
        for i in range(self._num):
            self._stop(i)
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # ---- helpers ----

    def _check_actions(self, actions) -> dict[str, np.ndarray]:
        out = {}
        missing = set(self.act_space) - set(actions)
        if missing:
            raise KeyError(f"BatchEnv.step() actions lack keys {sorted(missing)}; act_space has {sorted(self.act_space)}.")
        for key, space in self.act_space.items():
            value = np.asarray(actions[key])
            if value.shape != (self._num, *space.shape):
                raise ValueError(
                    f"action '{key}' has shape {value.shape}; expected {(self._num, *space.shape)} "
                    f"(one row per env, {self._num} envs)."
                )
            out[key] = value.astype(space.dtype, copy=False)
        return out

    def _stack(self, rows: list[dict]) -> dict[str, np.ndarray]:
        keys = rows[0].keys()
        return {k: np.stack([np.asarray(row[k]) for row in rows]) for k in keys}

    def _check_spaces(self, i, obs_space, act_space):
        if obs_space != self.obs_space or act_space != self.act_space:
            raise EnvWorkerError(
                i,
                f"its spaces differ from worker 0's (obs {sorted(obs_space)} vs {sorted(self.obs_space)}); "
                f"all envs of a batch must be the same task with the same config.",
            )

    def _start(self, i: int) -> None:
        parent, child = self._context.Pipe()
        proc = self._context.Process(
            target=_worker_main,
            args=(i, self._ctor, self._config_dict, child),
            name=f"env-worker-{i}",
            daemon=True,
        )
        # The child reads MUJOCO_EGL_DEVICE_ID when dm_control is first imported,
        # which may happen while spawn re-imports the parent's __main__; setting it
        # in our environment around start() makes the child inherit it from birth.
        device = egl_device_for(Config(self._config_dict), i)
        previous = os.environ.get("MUJOCO_EGL_DEVICE_ID")
        try:
            if device is not None:
                os.environ["MUJOCO_EGL_DEVICE_ID"] = device
            proc.start()
        finally:
            if device is not None:
                if previous is None:
                    os.environ.pop("MUJOCO_EGL_DEVICE_ID", None)
                else:
                    os.environ["MUJOCO_EGL_DEVICE_ID"] = previous
        child.close()
        self._procs[i], self._conns[i] = proc, parent

    def _await_ready(self, i: int):
        kind, payload = self._receive(i, self._start_timeout, "building its env")
        if kind != "ready":
            raise EnvWorkerError(i, f"unexpected reply '{kind}' while starting.")
        obs_space, act_space, pid = payload
        self._pids[i] = pid
        return obs_space, act_space

    def _attach(self, i: int) -> None:
        self._send(i, "attach", {"num": self._num, "names": self._shared.names})
        kind, _ = self._receive(i, self._step_timeout, "attaching shared memory")
        if kind != "ok":
            raise EnvWorkerError(i, f"unexpected reply '{kind}' while attaching shared memory.")

    def _send(self, i: int, command: str, payload=None) -> None:
        try:
            self._conns[i].send((command, payload))
        except (BrokenPipeError, EOFError, OSError):
            pass  # The worker is dead; the receive side reports it.

    def _death_cause(self, i: int, waiting_for: str) -> str:
        proc = self._procs[i]
        proc.join(timeout=1.0)
        code = proc.exitcode
        if code is None:
            return f"its process (pid {proc.pid}) closed its pipe while {waiting_for}"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"its process (pid {proc.pid}) was killed by {name} while {waiting_for}"
        return f"its process (pid {proc.pid}) exited with code {code} while {waiting_for}"

    def _reply_or_failure(self, i: int, waiting_for: str):
        """Reads one reply from a worker whose pipe is readable, or returns a failure cause."""
        try:
            kind, payload = self._conns[i].recv()
        except (EOFError, OSError, ConnectionResetError):
            return None, self._death_cause(i, waiting_for)
        if kind == "error":
            raise EnvWorkerError(i, f"exception in the env while {waiting_for}:\n{payload}")
        if kind == "closed":
            return None, self._death_cause(i, waiting_for)
        return (kind, payload), None

    def _collect(self, indices, failed: dict[int, str], timeout: float | None = None, waiting_for: str = "stepping"):
        """Waits for one reply from each worker in `indices`; dead or silent ones go to `failed`."""
        timeout = self._step_timeout if timeout is None else timeout
        pending = set(indices)
        replies = {}
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                for i in pending:
                    failed[i] = f"no reply within {timeout:.0f} s while {waiting_for} (hung; step_timeout={timeout:.0f})"
                    self._kill(i)
                break
            waitables = {self._conns[i]: i for i in pending}
            waitables.update({self._procs[i].sentinel: i for i in pending})
            ready = multiprocessing.connection.wait(list(waitables), timeout=min(left, 1.0))
            for obj in ready:
                i = waitables[obj]
                if i not in pending:
                    continue
                if obj is self._procs[i].sentinel and self._conns[i].poll():
                    continue  # It answered before exiting: read the answer first.
                if obj is self._procs[i].sentinel:
                    failed[i] = self._death_cause(i, waiting_for)
                    pending.discard(i)
                    continue
                reply, cause = self._reply_or_failure(i, waiting_for)
                pending.discard(i)
                if cause is not None:
                    failed[i] = cause
                else:
                    replies[i] = reply
        return replies

    def _receive(self, i: int, timeout: float, waiting_for: str):
        failed: dict[int, str] = {}
        replies = self._collect([i], failed, timeout, waiting_for)
        if i in failed:
            raise EnvWorkerError(i, failed[i])
        return replies[i]

    def _recover(self, i: int, cause: str, actions: Mapping[str, np.ndarray]) -> dict:
        """Restarts a dead worker; returns the observation that ends its episode."""
        self._restarts[i] += 1
        if self._restarts[i] > self._max_restarts:
            raise EnvWorkerError(i, f"{cause}; it was restarted {self._max_restarts} times already (max_restarts).")
        self.restart_log.append((i, cause))
        self._kill(i)
        self._start(i)
        obs_space, act_space = self._await_ready(i)
        self._check_spaces(i, obs_space, act_space)
        if self._shared is not None:
            self._attach(i)
        if self._curriculum_cache[i] is not None:
            self._call(i, "load_curriculum_state", (self._curriculum_cache[i],))
        self.say(f"warning: env worker {i}: {cause}; restarted it as pid {self._pids[i]} (restart "
                 f"{self._restarts[i]} of at most {self._max_restarts} for this worker); the episode it was running "
                 "was cut short.")
        last = self._last_obs[i]
        if last is None or bool(np.asarray(last.get("is_last", False))):
            # No running episode to end (none yet, or it ended on the last step): start one now and hand
            # out its first step. Ending the ended one again would count one episode twice downstream.
            reset_step = {k: v[i] for k, v in actions.items()}
            if "reset" in reset_step:
                reset_step["reset"] = np.asarray(True)
            self._send(i, "step", reset_step)
            kind, payload = self._receive(i, self._step_timeout, "stepping after a restart")
            if self._transport == "shm":
                row = {k: view[i].copy() for k, view in self._shared.views.items()}
                row.update(payload)
                return row
            return payload
        row = {k: np.array(v, copy=True) for k, v in last.items()}
        row["is_first"] = np.asarray(False)
        row["is_last"] = np.asarray(True)
        if "is_terminal" in row:
            row["is_terminal"] = np.asarray(False)  # Cut short, not ended by the task.
        if "reward" in row:
            row["reward"] = np.zeros_like(row["reward"])
        self._force_reset[i] = True
        return row

    def _call(self, i: int, name: str, args=()):
        if self._parallel == "none":
            return self._in_envs_thread(getattr(self._envs[i], name), *args)
        self._send(i, "call", (name, tuple(args)))
        return self._receive(i, self._step_timeout, f"calling {name}()")[1]

    def _call_all(self, name: str, args_list=None):
        args_list = args_list or [()] * self._num
        if self._parallel == "none":
            return [self._in_envs_thread(getattr(env, name), *args) for env, args in zip(self._envs, args_list)]
        for i, args in enumerate(args_list):
            self._send(i, "call", (name, tuple(args)))
        failed: dict[int, str] = {}
        replies = self._collect(range(self._num), failed, waiting_for=f"calling {name}()")
        if failed:
            i = min(failed)
            raise EnvWorkerError(i, failed[i])
        return [replies[i][1] for i in range(self._num)]

    def _kill(self, i: int) -> None:
        proc = self._procs[i]
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(timeout=5.0)
        if self._conns[i] is not None:
            self._conns[i].close()

    def _stop(self, i: int) -> None:
        proc, conn = self._procs[i], self._conns[i]
        if proc is None:
            return
        if proc.is_alive():
            self._send(i, "close")
            proc.join(timeout=10.0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5.0)
        if conn is not None:
            conn.close()
        self._procs[i] = None
        self._conns[i] = None

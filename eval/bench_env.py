"""Environment throughput: raw dm_control vs our adapter vs BatchEnv workers.

    python eval/bench_env.py                      # default rows, ~2-3 minutes
    python eval/bench_env.py --seconds 5 --write  # longer, and record in eval/RESULTS.md

For each task, "raw" steps the task's own composer.Environment (what the task
factory builds: same walker, camera and render settings) and "adapter" steps
`dreamer_rodent.env.Env` around an identical env; the two are timed in
alternating blocks so that load changes on a shared machine hit both alike.
"CPU ms/step" is this process's CPU time per step, which contention inflates
far less than wall time; the overhead column is the median over blocks of the
adapter's block time over raw's (same actions, same trajectory). BatchEnv rows count env steps (batch steps x workers).
The reference row is dm_control's own `basic_rodent_2020.rodent_maze_forage`
with its stock 64x64 camera. Actions are uniform random; episodes are not reset
within a row (the first 30 s episode outlasts every row).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

import dreamer_rodent  # noqa: F401  (sets MUJOCO_GL before dm_control is imported)
import numpy as np

from dreamer_rodent.config import build_config

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Environment throughput (`eval/bench_env.py`)"
ALL_KEYS = ["image", "vestibular", "proprio", "task"]
NO_IMAGE = ["vestibular", "proprio", "task"]
BLOCK = 25  # steps per alternating block


def _config(task: str, image: bool, size: int, envs: int = 1):
    keys = ALL_KEYS if image else NO_IMAGE
    return build_config(flags={"task": task, "env.keys": keys, "env.image_size": size, "run.envs": envs})


class _Raw:
    """Steps a task factory's composer env directly (resetting when it ends)."""

    def __init__(self, config):
        from tasks import registry

        self.env = registry.get(config.task).factory(config, int(config.seed) * int(config.env.seed_stride))
        self.env = self.env.env
        self.env.reset()
        spec = self.env.action_spec()
        self.shape = spec.shape
        self.low = np.asarray(spec.minimum, np.float64) * np.ones(spec.shape)
        self.high = np.asarray(spec.maximum, np.float64) * np.ones(spec.shape)

    def step(self, unit_action):
        # The adapter's own rescaling, so that raw and adapter envs follow the
        # same trajectory and their physics costs match step for step.
        action = np.clip(np.asarray(unit_action, np.float64), -1.0, 1.0)
        timestep = self.env.step(self.low + (action + 1.0) * 0.5 * (self.high - self.low))
        if timestep.last():
            self.env.reset()

    def close(self):
        self.env.close()


class _Adapter:
    def __init__(self, config):
        from dreamer_rodent.env import make_env

        self.env = make_env(config)
        self.env.step({"reset": True})
        self.shape = self.env.act_space["action"].shape

    def step(self, unit_action):
        self.env.step({"action": unit_action, "reset": False})

    def close(self):
        self.env.close()


class _Stock:
    """dm_control's reference rodent maze forage, untouched."""

    def __init__(self):
        from dm_control.locomotion.examples import basic_rodent_2020

        self.env = basic_rodent_2020.rodent_maze_forage(np.random.RandomState(0))
        self.env.reset()
        spec = self.env.action_spec()
        self.shape, self.low, self.high = spec.shape, spec.minimum, spec.maximum

    step = _Raw.step
    close = _Raw.close


def _time_alternating(envs: list, seconds: float, rng) -> list[tuple[float, float, float, float]]:
    """Per env: (steps/s, CPU ms/step, median wall and CPU time ratio to envs[0]).

    The envs are stepped in alternating blocks of the same actions; the median
    of per-block ratios shrugs off bursts of load from other processes.
    """
    actions = rng.uniform(-1, 1, (BLOCK, *envs[0].shape)).astype(np.float32)
    for env in envs:
        for a in actions[:5]:
            env.step(a)
    walls = [[] for _ in envs]
    cpus = [[] for _ in envs]
    deadline = time.perf_counter() + seconds * len(envs)
    while time.perf_counter() < deadline or not walls[0]:
        for i, env in enumerate(envs):
            w, c = time.perf_counter(), time.process_time()
            for a in actions:
                env.step(a)
            walls[i].append(time.perf_counter() - w)
            cpus[i].append(time.process_time() - c)
    out = []
    for wall, cpu in zip(walls, cpus):
        steps = BLOCK * len(wall)
        wall_ratio = float(np.median(np.asarray(wall) / np.asarray(walls[0])))
        cpu_ratio = float(np.median(np.asarray(cpu) / np.maximum(np.asarray(cpus[0]), 1e-9)))
        out.append((steps / sum(wall), 1000 * sum(cpu) / steps, wall_ratio, cpu_ratio))
    return out


def _time_batch(config, workers: int, seconds: float, rng, transport: str = "shm") -> float:
    from dreamer_rodent.parallel import BatchEnv

    with BatchEnv(config, num=workers, parallel="process", transport=transport) as env:
        shape = (workers, *env.act_space["action"].shape)
        reset = np.zeros(workers, bool)
        for _ in range(5):
            env.step({"action": rng.uniform(-1, 1, shape).astype(np.float32), "reset": reset})
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or steps == 0:
            env.step({"action": rng.uniform(-1, 1, shape).astype(np.float32), "reset": reset})
            steps += workers
        return steps / (time.perf_counter() - start)


class NullEnv:
    """An env that only returns observations (an image of `size`), to time transport."""

    def __init__(self, config, index, size=64):
        from dreamer_rodent.spaces import Space

        self.obs_space = {
            "reward": Space((), np.float32), "is_first": Space((), bool), "is_last": Space((), bool),
            "is_terminal": Space((), bool), "image": Space((size, size, 3), np.uint8, 0, 255),
            "proprio": Space((200,), np.float32),
        }
        self.act_space = {"action": Space((38,), np.float32, -1, 1), "reset": Space((), bool)}
        self._obs = {k: np.zeros(v.shape, v.dtype) for k, v in self.obs_space.items()}

    def step(self, action):
        return self._obs

    def close(self):
        pass


def null_env_ctor(size, config, index):
    return NullEnv(config, index, size)


def _transport_overhead(size: int, transport: str, workers: int = 2, steps: int = 500) -> float:
    """Milliseconds per batch step spent outside the envs (IPC, copies, stacking)."""
    import functools

    from dreamer_rodent.parallel import BatchEnv

    config = build_config(flags={"run.envs": workers})
    with BatchEnv(config, ctor=functools.partial(null_env_ctor, size), transport=transport) as env:
        act = {"action": np.zeros((workers, 38), np.float32), "reset": np.zeros(workers, bool)}
        for _ in range(20):
            env.step(act)
        start = time.perf_counter()
        for _ in range(steps):
            env.step(act)
        return 1000 * (time.perf_counter() - start) / steps


def _targets(adapter: dict, size: int) -> str:
    """The project's throughput targets, checked against this run's adapter rows."""
    if not adapter:
        return ""
    checks = []
    worst = max(ratio for _, ratio in adapter.values())
    checks.append(f"adapter over raw <= 10%: worst {100 * (worst - 1):+.1f}% ({'met' if worst <= 1.10 else 'MISSED'})")
    for task, floor in (("rodent_goto", 150), ("rodent_maze_forage", 60)):
        if (task, True) in adapter:
            rate = adapter[task, True][0]
            checks.append(f"{task} >= {floor} steps/s with image: {rate:.0f} ({'met' if rate >= floor else 'MISSED'})")
    return f"\nTargets (one process, {size}x{size} image): " + "; ".join(checks) + ".\n"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=RESULTS.parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def run(args) -> str:
    rng = np.random.default_rng(0)
    rows = []
    adapter_rows = {}  # (task, image) -> (steps/s, wall ratio)
    load_start = _load()
    size = args.image_size

    def add(task, path, image, workers, rate, cpu=None, ratios=None):
        overhead = f"{(ratios[0] - 1) * 100:+.1f}% / {(ratios[1] - 1) * 100:+.1f}%" if ratios else ""
        rows.append((task, path, "yes" if image else "no", str(workers), f"{rate:.1f}",
                     f"{cpu:.2f}" if cpu is not None else "", overhead))
        print(" | ".join(rows[-1]), f"(load {_load()})", file=sys.stderr, flush=True)

    for task in args.tasks:
        for image in (True, False):
            config = _config(task, image, size)
            raw, adapter = _Raw(config), _Adapter(config)
            (raw_rate, raw_cpu, _, _), (ad_rate, ad_cpu, *ratios) = _time_alternating([raw, adapter], args.seconds, rng)
            raw.close(), adapter.close()
            add(task, "raw dm_control", image, 1, raw_rate, raw_cpu)
            add(task, "adapter (Env)", image, 1, ad_rate, ad_cpu, ratios)
            adapter_rows[task, image] = (ad_rate, ratios[0])
        for workers in args.workers:
            rate = _time_batch(_config(task, True, size, workers), workers, args.seconds, rng)
            add(task, "BatchEnv processes", True, workers, rate)
    if args.transport_row and max(args.workers) >= 2:
        task = args.tasks[0]
        rate = _time_batch(_config(task, True, size, 2), 2, args.seconds, rng, transport="pipe")
        add(task, "BatchEnv processes, pipe transport", True, 2, rate)
    if args.stock:
        stock = _Stock()
        [(rate, cpu, _, _)] = _time_alternating([stock], args.seconds, rng)
        stock.close()
        add("dm_control basic_rodent_2020.rodent_maze_forage", "stock (its own 64x64 camera)", True, 1, rate, cpu)

    transport_lines = []
    if args.transport_row:
        transport_lines = ["| image | shared memory (ms/batch step) | pipe (ms/batch step) |", "|---|---|---|"]
        for tsize in (64, 256):
            shm, pipe = _transport_overhead(tsize, "shm"), _transport_overhead(tsize, "pipe")
            transport_lines.append(f"| {tsize}x{tsize} | {shm:.2f} | {pipe:.2f} |")
            print(transport_lines[-1], f"(load {_load()})", file=sys.stderr, flush=True)

    header = ("task", "path", "image", "workers", "env steps/s", "CPU ms/step", "adapter over raw (median block ratio, wall / CPU)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    command = "python eval/bench_env.py " + " ".join(sys.argv[1:])
    meta = (
        f"Command: `{command.strip()}`; commit {_git_commit()}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} CPUs ({platform.machine()}), MUJOCO_GL={os.environ.get('MUJOCO_GL')}; "
        f"image {size}x{size}; {args.seconds:g} s per row; "
        f"load average (1/5/15 min) {load_start} at start, {_load()} at end."
    )
    text = meta + "\n\n" + "\n".join(lines) + "\n" + _targets(adapter_rows, size)
    if transport_lines:
        text += (
            "\nBatchEnv transport overhead: 2 workers running an env that does nothing but return "
            "its observation (image + 200 floats), so the time is all IPC, copies and stacking.\n\n"
            + "\n".join(transport_lines) + "\n"
        )
    return text


def write_results(text: str, path: pathlib.Path = RESULTS) -> None:
    """Replaces the body of the env-throughput section only, keeping the rest."""
    content = path.read_text()
    if SECTION not in content:
        raise SystemExit(f"{path} has no '{SECTION}' heading; add it, then rerun with --write.")
    start = content.index(SECTION) + len(SECTION)
    after = re.search(r"^## ", content[start:], flags=re.M)
    end = start + after.start() if after else len(content)
    body = (
        "\n\n" + text + "\nRows: raw = the task's composer env stepped directly; adapter = "
        "`dreamer_rodent.env.Env` (dict actions and observations, log metrics); BatchEnv = "
        "`dreamer_rodent.parallel.BatchEnv` with worker processes (env steps/s summed over workers).\n\n"
    )
    path.write_text(content[:start] + body + content[end:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["rodent_goto", "mouse_goto", "rodent_maze_forage"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--no-stock", dest="stock", action="store_false", help="skip dm_control's reference row")
    parser.add_argument("--no-transport-row", dest="transport_row", action="store_false",
                        help="skip the pipe-transport rows and the transport-overhead table")
    parser.add_argument("--write", action="store_true", help="write the table into eval/RESULTS.md")
    args = parser.parse_args(argv)
    text = run(args)
    print(text)
    if args.write:
        write_results(text)
        print(f"written to {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Learning curves: train a task for a budget of env steps per seed and chart it.

    python eval/learn.py --task ball_goto --steps 20000 --seeds 0 1 2 --out eval/results/ball_goto \
        [--minutes M] [--threshold 0.9] [--window 20] [--level 0] [--baseline-episodes 20] \
        [--baseline-levels 0 1 2] [--final-eval-episodes 20 --final-eval-levels 0 1 [--final-eval-only]] [--plot-only] \
        [--reference CSV] [-- --configs size1m proprio_only --run.envs 1 --run.env_parallel none ...]

For each seed it runs `dreamer_rodent.train` in a child process (one run
directory per seed: OUT/seed<S>/, with the usual metrics.jsonl and
checkpoints) with a small hook around the driver that appends every finished
training episode to OUT/seed<S>/episodes.jsonl: env steps so far, wall-clock
seconds since the child started (compilation included), return, success (the
target was reached at least once: the task's targets_reached count > 0, which
also sees targets reached inside an action repeat), `level` (the level the
episode's targets were drawn at), `curriculum_level` (the curriculum's level
then; above `level` for an easy episode), `easy`, targets reached, the reach
rate `targets_per_min` (per minute of simulated time) and `first_reach_s`
(simulated seconds to the first reach; null when none). A task without a success
metric (no `log/success`: the dm_control suite benchmarks) records success as
null and gets return curves only.

The curve is the training episodes themselves (the stochastic training
policy, random actions during the prefill); checkpoints are not evaluated
separately, which on a 2-core CPU would cost as much as the training. A random
policy baseline (uniform actions, same task and config, `--baseline-episodes`
episodes) is rolled out once per level of `--baseline-levels` (default 0), the
curriculum pinned there, into OUT/random/episodes.jsonl (level 0) and
OUT/random_level<L>/episodes.jsonl.

Written to OUT:
  curve.csv    one row per episode and seed (seed "random", "random_level<L>" for the
               baselines), with the success rate, mean return and mean reach rate over
               the last `--window` episodes at level `--level` (a baseline's own level)
  summary.csv  one row per seed and one per random baseline, `level` being the level
               its rates are at: steps and wall-clock to the threshold, final (last
               window) and mean (all episodes at the level) success rate, return and
               targets per minute, mean time to first reach, final and max curriculum
               level, easy episodes, and the mean return of the episodes that end in
               (90k, 100k] env steps (`return_90k_100k`, the published scores' 100k
               point) and in the last 10% of the run's steps; with --reference one
               row per published method (`ref:METHOD`) with its return_90k_100k
  curve.png    success rate, return and targets per minute over the window, and the
               curriculum level, against env steps, one line per seed, the random
               policy (at `--level`) dashed; with --reference the published methods'
               mean over seeds with a light min-max band

Steps-to-threshold: the env step at the end of the first episode at which the
success rate over the last `--window` episodes at level `--level` (only
episodes at that level count) reaches `--threshold`; empty if never.
A seed whose run directory holds a finished run (`learn_done.json`) is not
trained again; `--plot-only` only rebuilds the CSVs and plot from what is there.
Seeds may run as separate learn.py processes into one OUT (`--seeds 0` and
`--seeds 1` at once, one core each): the CSVs, the plot and final_eval.csv
always hold every seed directory in OUT, so the last process to finish leaves
them complete (each evaluates only its own seeds).

`--reference CSV` (columns task,method,seed,env_steps,return, like
../shared/anchors/dmc_proprio_published.csv) adds the rows of `--task` to the
return plot and the summary, one curve per method.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import Iterable, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

EPISODES = "episodes.jsonl"
DONE = "learn_done.json"


# ---------------------------------------------------------------------------
# Child process: train with an episode hook.


def _succeeded(success, targets) -> float:
    """1.0 if the episode succeeded: log/success seen at some step, or (where the task counts them) a target
    reached. Records made before the env adapter carried a mid-repeat reach into log/success (4aaa9ad) saw only
    the last sub-step's; their target counts saw them all."""
    return float(bool(success) or (targets is not None and targets > 0))


def _scores(episode: dict, has_success: bool = True) -> dict:
    """An episode record of the driver -> the fields learn.py keeps.

    Success by `_succeeded`. A task without log/success (`has_success` false) gets None: the driver's 0 there
    would read as "never succeeded".
    """
    targets = episode.get("targets_reached")
    success = _succeeded(episode["success"] > 0, targets) if has_success else None
    current = episode.get("curriculum_level", 0.0)
    record = {"return": episode["score"], "length": episode["length"], "success": success,
              # The level the episode's targets were drawn at (an easy episode's is below the curriculum's).
              "level": episode.get("curriculum_episode_level", current), "curriculum_level": current,
              "easy": episode.get("curriculum_easy", 0.0), "env": episode["env"],
              "targets": float("nan") if targets is None else targets}
    if "targets_per_min" in episode:
        first = episode.get("first_reach_s")
        record["targets_per_min"] = episode["targets_per_min"]
        record["first_reach_s"] = first if first is not None and math.isfinite(first) else None  # None: no reach
    return record


def budget_spent(start: float, now: float, minutes: float) -> bool:
    """Whether a wall-clock budget of `minutes` (0: none) that began at `start` is used up at `now` (seconds)."""
    return minutes > 0 and now - start >= minutes * 60.0


def episode_hook(step, out, clock, start: float, minutes: float = 0.0, stop=None):
    """`Driver.step` wrapped: appends each finished episode to `out` (one JSON line, `wall_s` from `clock`) and, at
    the first step that finds the `minutes` budget spent, calls `stop()` once. Returns the wrapper; its `steps`
    dict counts the env steps taken."""
    steps = {"n": 0, "stopped": False}

    def wrapped(self, policy):
        transition, finished = step(self, policy)
        steps["n"] += self.num
        now = clock()
        for episode in finished:
            record = {"env_steps": steps["n"], "wall_s": round(now - start, 3),
                      **_scores(episode, "log/success" in self.env.obs_space)}
            out.write(json.dumps(record) + "\n")
        if stop is not None and not steps["stopped"] and budget_spent(start, now, minutes):
            steps["stopped"] = True
            stop(steps["n"])
        return transition, finished

    wrapped.steps = steps
    return wrapped


def _stop_by_sigterm(env_steps: int) -> None:
    """Ends the run as SIGTERM does (train saves a checkpoint and returns 0). Called from inside the training loop,
    so train's handler is installed."""
    import signal

    print(f"learn.py: the --minutes budget is spent at env step {env_steps}; stopping the run.", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker(rundir: str, train_argv: list[str], minutes: float = 0.0, clock=time.monotonic,
            stop=_stop_by_sigterm) -> int:
    """Runs dreamer_rodent.train.main with Driver.step wrapped to log episodes.

    minutes > 0: a wall-clock budget, compilation included, checked after every
    env step (`budget_spent`); when it is spent, `stop` ends the run (by default
    a SIGTERM to this process, which train handles by saving a checkpoint and
    returning 0). `clock` is injectable so that the budget is testable without
    waiting.
    """
    start = clock()
    from dreamer_rodent import driver as driver_lib
    from dreamer_rodent import train

    path = pathlib.Path(rundir) / EPISODES
    path.parent.mkdir(parents=True, exist_ok=True)
    original = driver_lib.Driver.step
    with open(path, "a", buffering=1) as out:
        hook = episode_hook(original, out, clock, start, minutes, stop)
        driver_lib.Driver.step = hook
        try:
            code = train.main(train_argv + ["--logdir", rundir])
        finally:
            driver_lib.Driver.step = original
    if code == 0:
        (pathlib.Path(rundir) / DONE).write_text(json.dumps({"wall_s": clock() - start,
                                                              "env_steps": hook.steps["n"]}) + "\n")
    return code


def baseline_name(level: int) -> str:
    """The random policy's run directory and summary row at `level`: `random` at level 0 (the name from before
    baselines had levels), `random_level<L>` at the others."""
    return "random" if int(level) == 0 else f"random_level{int(level)}"


def baseline_level(name: str) -> int | None:
    """The level of a baseline named by `baseline_name` (None: not a baseline)."""
    if name == "random":
        return 0
    if name.startswith("random_level") and name[len("random_level"):].isdigit():
        return int(name[len("random_level"):])
    return None


def has_curriculum(train_argv: list[str]) -> bool:
    """Whether the task's env reports a curriculum level (go-to tasks do, the suite benchmarks do not)."""
    from dreamer_rodent.config import parse_args
    from dreamer_rodent.env import make_env

    config, _ = parse_args(train_argv)
    env = make_env(config, 0)
    try:
        return "log/curriculum_level" in env.obs_space
    finally:
        env.close()


def check_baseline_levels(train_argv: list[str], levels: Sequence[int]) -> None:
    """Every --baseline-levels entry names a curriculum level of the task's config (checked before training)."""
    from dreamer_rodent.config import parse_args

    config, _ = parse_args(train_argv)
    count = len(config.task_kwargs.curriculum_levels)
    wrong = [level for level in levels if not 0 <= level < count]
    if wrong:
        raise SystemExit(f"error: --baseline-levels {' '.join(map(str, wrong))}: the config has {count} curriculum "
                         f"levels (0-{count - 1}, target distances {list(config.task_kwargs.curriculum_levels)} m).")


@contextlib.contextmanager
def baseline_lock(path: pathlib.Path):
    """An exclusive lock on `path` (flock) while a random baseline is measured or checked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def random_baseline(train_argv: list[str], out_dir: pathlib.Path, episodes: int, level: int | None = None) -> list[dict]:
    """Uniform random actions in the same task and config for `episodes` episodes, the curriculum pinned to
    `level` if given (`task_kwargs.level`)."""
    from dreamer_rodent.config import parse_args
    from dreamer_rodent.driver import Driver
    from dreamer_rodent.parallel import BatchEnv

    if level is not None:
        train_argv = list(train_argv) + ["--task_kwargs.level", str(int(level))]
    config, _ = parse_args(train_argv)
    start = time.monotonic()
    envs = BatchEnv(config, parallel="none")
    records = []
    try:
        if level and "log/curriculum_level" not in envs.obs_space:
            raise SystemExit(f"error: --baseline-levels {level}: task '{config.task}' has no curriculum; "
                             "use --baseline-levels 0.")
        driver = Driver(envs, seed=int(config.seed) * 7919 + 1)
        has_success = "log/success" in envs.obs_space
        n = 0
        while len(records) < episodes:
            _, finished = driver.step(driver.random_actions)
            n += driver.num
            for episode in finished:
                records.append({"env_steps": n, "wall_s": round(time.monotonic() - start, 3),
                                **_scores(episode, has_success)})
    finally:
        envs.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / EPISODES, "w") as f:
        for record in records[:episodes]:
            f.write(json.dumps(record) + "\n")
    (out_dir / DONE).write_text(json.dumps({"wall_s": time.monotonic() - start, "env_steps": n}) + "\n")
    return records[:episodes]


# ---------------------------------------------------------------------------
# Curves (pure functions: the test checks these).


def read_episodes(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
    return records


def level_of(episode: dict) -> int:
    """The curriculum level an episode ran at (episodes of tasks without one: 0)."""
    return int(round(episode.get("level", 0)))


def curriculum_level_of(episode: dict) -> int:
    """The curriculum's level during an episode (its own `level` for records from before easy episodes)."""
    return int(round(episode.get("curriculum_level", episode.get("level", 0))))


def has_rate(runs: dict[str, list[dict]]) -> bool:
    """Whether the episodes carry the task's reach rate (targets per minute)."""
    return any(e.get("targets_per_min") is not None for episodes in runs.values() for e in episodes)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def has_success(runs: dict[str, list[dict]]) -> bool:
    """Whether the task scores success (a task without log/success records None: return curves only)."""
    return any(e.get("success") is not None for episodes in runs.values() for e in episodes)


def success_rate(episodes: Sequence[dict]) -> float | None:
    scored = [e["success"] for e in episodes if e.get("success") is not None]
    return sum(scored) / len(scored) if scored else None


def rolling(episodes: Sequence[dict], level: int, window: int) -> list[dict]:
    """Each episode with the success rate, mean return and mean reach rate over the last `window` episodes at `level`.

    Episodes at other levels get the values of the last window (or None before
    the first episode at the level); `full` says the window holds `window`
    episodes. The success rate is None for a task without success, the reach
    rate (`targets_per_min_mean`) for a task without it.
    """
    recent: list[dict] = []
    rows = []
    for episode in episodes:
        if level_of(episode) == level:
            recent.append(episode)
            recent = recent[-window:]
        rate = success_rate(recent)
        ret = sum(e["return"] for e in recent) / len(recent) if recent else None
        reach = _mean(e.get("targets_per_min") for e in recent)
        rows.append({**episode, "success_rate": rate, "return_mean": ret, "targets_per_min_mean": reach,
                     "full": len(recent) == window})
    return rows


def steps_to_threshold(rows: Sequence[dict], threshold: float) -> dict | None:
    """The first row whose full window reaches `threshold` (its env_steps and wall_s), or None."""
    for row in rows:
        if row["full"] and row["success_rate"] is not None and row["success_rate"] >= threshold - 1e-9:
            return row
    return None


def mean_return_between(episodes: Sequence[dict], low: float, high: float) -> float | None:
    """Mean return of the episodes that end after env step `low` and at or before `high` (None: none did)."""
    returns = [e["return"] for e in episodes if low < e["env_steps"] <= high]
    return sum(returns) / len(returns) if returns else None


def _rounded(value: float | None, digits: int):
    return "" if value is None else round(value, digits)


def summarize(name: str, episodes: Sequence[dict], level: int, window: int, threshold: float,
              done: dict | None = None) -> dict:
    rows = rolling(episodes, level, window)
    hit = steps_to_threshold(rows, threshold)
    at_level = [e for e in episodes if level_of(e) == level]
    last = at_level[-window:]
    steps = (done or {}).get("env_steps", episodes[-1]["env_steps"] if episodes else 0)
    return {
        "seed": name,
        "level": level,
        "episodes": len(episodes),
        "episodes_at_level": len(at_level),
        "env_steps": steps,
        "wall_s": round((done or {}).get("wall_s", episodes[-1]["wall_s"] if episodes else 0.0), 1),
        "steps_to_threshold": hit["env_steps"] if hit else "",
        "wall_s_to_threshold": round(hit["wall_s"], 1) if hit else "",
        "final_success_rate": _rounded(success_rate(last), 3),
        "final_return": round(sum(e["return"] for e in last) / len(last), 2) if last else "",
        "mean_success_rate": _rounded(success_rate(at_level), 3),
        "mean_return": round(sum(e["return"] for e in at_level) / len(at_level), 2) if at_level else "",
        "final_targets_per_min": _rounded(_mean(e.get("targets_per_min") for e in last), 3),
        "mean_targets_per_min": _rounded(_mean(e.get("targets_per_min") for e in at_level), 3),
        "mean_first_reach_s": _rounded(_mean(e.get("first_reach_s") for e in at_level), 2),
        "return_90k_100k": _rounded(mean_return_between(episodes, 90_000, 100_000), 2),
        "return_last_10pct": _rounded(mean_return_between(episodes, 0.9 * steps, steps), 2),
        "final_level": curriculum_level_of(episodes[-1]) if episodes else "",
        "max_level": max(curriculum_level_of(e) for e in episodes) if episodes else "",
        "easy_episodes": sum(1 for e in episodes if e.get("easy")),
    }


CURVE_FIELDS = ["seed", "episode", "env_steps", "wall_s", "return", "success", "level", "curriculum_level", "easy",
                "length", "targets", "targets_per_min", "first_reach_s", "success_rate", "return_mean",
                "targets_per_min_mean"]
SUMMARY_FIELDS = ["seed", "level", "episodes", "episodes_at_level", "env_steps", "wall_s", "steps_to_threshold",
                  "wall_s_to_threshold", "final_success_rate", "final_return", "mean_success_rate", "mean_return",
                  "final_targets_per_min", "mean_targets_per_min", "mean_first_reach_s",
                  "return_90k_100k", "return_last_10pct", "final_level", "max_level", "easy_episodes"]
# Columns about success (and targets), left out for a task without it.
SUCCESS_FIELDS = {"success", "targets", "success_rate", "steps_to_threshold", "wall_s_to_threshold",
                  "final_success_rate", "mean_success_rate", "targets_per_min", "first_reach_s",
                  "targets_per_min_mean", "final_targets_per_min", "mean_targets_per_min", "mean_first_reach_s"}


def write_csvs(out: pathlib.Path, runs: dict[str, list[dict]], level: int, window: int, threshold: float,
               dones: dict[str, dict] | None = None, reference: dict | None = None,
               levels: dict[str, int] | None = None) -> list[dict]:
    """curve.csv and summary.csv for `runs` (name -> episodes) and the `reference` methods; returns the
    summary rows. `levels` gives a run its own level for the rates (the random baselines pinned to a level);
    the others use `level`. A task without success gets no success columns."""
    out.mkdir(parents=True, exist_ok=True)
    keep = (lambda field: True) if has_success(runs) else (lambda field: field not in SUCCESS_FIELDS)
    summaries = []
    with open(out / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, [k for k in CURVE_FIELDS if keep(k)], extrasaction="ignore")
        writer.writeheader()
        for name, episodes in runs.items():
            at = (levels or {}).get(name, level)
            for i, row in enumerate(rolling(episodes, at, window)):
                row = {**row, "seed": name, "episode": i}
                for key in ("success_rate", "return_mean", "targets_per_min_mean"):
                    row[key] = "" if row[key] is None else round(row[key], 4)
                row["return"] = round(row["return"], 3)
                for key in ("targets_per_min", "first_reach_s"):
                    value = row.get(key)
                    row[key] = "" if value is None or not math.isfinite(value) else round(value, 4)
                writer.writerow(row)
            summaries.append(summarize(name, episodes, at, window, threshold, (dones or {}).get(name)))
    for method, seeds in (reference or {}).items():
        value = mean_return_between([{"env_steps": x, "return": y} for points in seeds.values() for x, y in points],
                                    90_000, 100_000)
        summaries.append({"seed": f"ref:{method}", "return_90k_100k": _rounded(value, 2)})
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, [k for k in SUMMARY_FIELDS if keep(k)], extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(summaries)
    return summaries


# ---------------------------------------------------------------------------
# Published curves to compare with (--reference).

REFERENCE_COLUMNS = ("task", "method", "seed", "env_steps", "return")


class ReferenceFileError(ValueError):
    """A --reference file that cannot be used; the message says why."""


def read_reference(path: pathlib.Path, task: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """method -> seed -> [(env_steps, return)] for `task`, from a CSV with REFERENCE_COLUMNS."""
    if not path.is_file():
        raise ReferenceFileError(f"--reference {path} does not exist; give a CSV with columns "
                                 f"{','.join(REFERENCE_COLUMNS)} (e.g. ../shared/anchors/dmc_proprio_published.csv).")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REFERENCE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ReferenceFileError(f"--reference {path} lacks the column(s) {missing}; it needs "
                                     f"{','.join(REFERENCE_COLUMNS)}, got {reader.fieldnames}.")
        rows = list(reader)
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for line, row in enumerate(rows, start=2):
        if row["task"] != task:
            continue
        try:
            point = (float(row["env_steps"]), float(row["return"]))
        except ValueError:
            raise ReferenceFileError(f"--reference {path} line {line}: env_steps and return must be numbers, "
                                     f"got {row['env_steps']!r} and {row['return']!r}.") from None
        curves.setdefault(row["method"], {}).setdefault(row["seed"], []).append(point)
    if not curves:
        tasks = sorted({row["task"] for row in rows})
        raise ReferenceFileError(f"--reference {path} has no rows for task '{task}'; it has rows for "
                                 f"{', '.join(tasks) or 'no task'}.")
    return curves


def reference_band(seeds: dict[str, list[tuple[float, float]]], xmax: float | None = None):
    """(steps, mean, min, max) over the seeds at each env step they report, up to `xmax`."""
    by_step: dict[float, list[float]] = {}
    for points in seeds.values():
        for x, y in points:
            if xmax is None or x <= xmax:
                by_step.setdefault(x, []).append(y)
    xs = sorted(by_step)
    return (xs, [sum(by_step[x]) / len(by_step[x]) for x in xs], [min(by_step[x]) for x in xs],
            [max(by_step[x]) for x in xs])


# ---------------------------------------------------------------------------
# Plot with PIL (no matplotlib dependency).

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
REFERENCE_COLORS = [(70, 70, 70), (23, 190, 207), (188, 189, 34)]  # published methods, apart from the seeds'


def _tint(color, amount: float = 0.8):
    """`color` mixed with white: a band behind its line."""
    return tuple(int(c + (255 - c) * amount) for c in color)


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _panel(draw, box, series, baseline, ylabel, xmax, ylim=None, threshold=None, font=None, bands=()):
    """One chart in `box` (x0, y0, x1, y1): series = [(name, xs, ys, color)], baseline = y or None,
    bands = [(xs, lows, highs, color)] filled in a light tint behind the lines."""
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 70, x1 - 15, y0 + 15, y1 - 45
    ys_all = [y for _, _, ys, _ in series for y in ys if y is not None]
    ys_all += [y for _, lows, highs, _ in bands for y in lows + highs]
    if baseline is not None:
        ys_all.append(baseline)
    if ylim is None:
        lo, hi = (min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0)
        pad = 0.05 * (hi - lo or 1.0)
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = ylim
    xmax = xmax or 1.0

    def px(x, y):
        return (left + (right - left) * x / xmax, bottom - (bottom - top) * (y - lo) / (hi - lo or 1.0))

    for t in _nice_ticks(lo, hi):
        _, yy = px(0, t)
        draw.line([(left, yy), (right, yy)], fill=(225, 225, 225))
        draw.text((left - 8, yy), _fmt(t), fill=(0, 0, 0), font=font, anchor="rm")
    for t in _nice_ticks(0, xmax):
        xx, _ = px(t, lo)
        draw.line([(xx, top), (xx, bottom)], fill=(235, 235, 235))
        draw.text((xx, bottom + 6), _fmt(t), fill=(0, 0, 0), font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    draw.text(((left + right) / 2, bottom + 26), "env steps", fill=(0, 0, 0), font=font, anchor="mt")
    draw.text((x0 + 4, top - 12), ylabel, fill=(0, 0, 0), font=font)
    for xs, lows, highs, color in bands:
        if len(xs) > 1:
            draw.polygon([px(x, y) for x, y in zip(xs, highs)] + [px(x, y) for x, y in reversed(list(zip(xs, lows)))],
                         fill=_tint(color))
    if bands:
        draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    if threshold is not None:
        _, yy = px(0, threshold)
        for xs in range(int(left), int(right), 12):
            draw.line([(xs, yy), (min(xs + 4, right), yy)], fill=(120, 120, 120))
    if baseline is not None:
        _, yy = px(0, baseline)
        for xs in range(int(left), int(right), 16):
            draw.line([(xs, yy), (min(xs + 9, right), yy)], fill=(0, 0, 0), width=2)
    for _, xs, ys, color in series:
        points = [px(x, y) for x, y in zip(xs, ys) if y is not None]
        if len(points) == 1:
            (a, b), = points
            draw.ellipse([a - 2, b - 2, a + 2, b + 2], fill=color)
        elif points:
            draw.line(points, fill=color, width=2)


def plot(path: pathlib.Path, runs: dict[str, list[dict]], level: int, window: int, threshold: float, title: str,
         baseline: list[dict] | None = None, reference: dict | None = None) -> None:
    """curve.png: rolling success rate, return and reach rate (targets per minute) at `level`, and the curriculum
    level, against env steps per seed; random policy dashed; `reference` (read_reference's methods) as mean lines
    over min-max bands on the return. A task without success gets the return panel only, one without a reach
    rate (records from before it) no reach-rate panel."""
    from PIL import Image, ImageDraw

    import textwrap

    scored = has_success({**runs, "random": baseline or []})
    rated = scored and has_rate({**runs, "random": baseline or []})
    lines = textwrap.wrap(title, 120) or [""]
    head = 14 * len(lines) + 26
    foot = 52 if reference else 30  # the legend: seeds and baseline, then the published methods on a line below
    width, height = 1000, (940 + 360 * rated if scored else 520) + head + foot - 30
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(13)
    for i, line in enumerate(lines):
        draw.text((width / 2, 8 + 14 * i), line, fill=(0, 0, 0), font=_font(12), anchor="mt")
    series_s, series_r, series_l, series_t = [], [], [], []
    xmax = 0.0
    for i, (name, episodes) in enumerate(runs.items()):
        rows = rolling(episodes, level, window)
        xs = [r["env_steps"] for r in rows]
        xmax = max([xmax] + xs)
        color = COLORS[i % len(COLORS)]
        # The level-`level` curves end where the curriculum leaves that level (the level panel shows the rest).
        here = [level_of(e) == level for e in episodes]
        series_s.append((name, xs, [r["success_rate"] if h else None for r, h in zip(rows, here)], color))
        series_r.append((name, xs, [r["return_mean"] if h else None for r, h in zip(rows, here)], color))
        series_t.append((name, xs, [r["targets_per_min_mean"] if h else None for r, h in zip(rows, here)], color))
        series_l.append((name, xs, [float(curriculum_level_of(e)) for e in episodes], color))
    # The published curves, under the seeds' lines, over the steps our runs cover (all before any run has data).
    bands, references, published = [], [], []
    # Up to the first published point at or past our last episode (runs end an env step short of round numbers).
    points = sorted({x for seeds in (reference or {}).values() for pts in seeds.values() for x, _ in pts})
    limit = next((x for x in points if x >= xmax), None) if xmax else None
    for i, (method, seeds) in enumerate((reference or {}).items()):
        xs, means, lows, highs = reference_band(seeds, limit)
        color = REFERENCE_COLORS[i % len(REFERENCE_COLORS)]
        bands.append((xs, lows, highs, color))
        published.append((method, xs, means, color))
        references.append((method, len(seeds), color))
        xmax = xmax or max(xs, default=0.0)
    base_s = base_r = base_t = None
    if baseline:
        at = [e for e in baseline if level_of(e) == level] or baseline
        base_s = success_rate(at)
        base_r = sum(e["return"] for e in at) / len(at)
        base_t = _mean(e.get("targets_per_min") for e in at)
    ret_label = f"return (mean of last {window} " + (f"at level {level})" if scored else "episodes)")
    if scored:
        _panel(draw, (0, head, width, head + 360), series_s, base_s,
               f"success rate (last {window} episodes at level {level})", xmax, ylim=(-0.02, 1.02),
               threshold=threshold, font=font)
        _panel(draw, (0, head + 360, width, head + 720), published + series_r, base_r, ret_label, xmax, font=font,
               bands=bands)
        below = head + 720
        if rated:
            _panel(draw, (0, below, width, below + 360), series_t, base_t,
                   f"targets reached per minute of simulated time (mean of last {window} at level {level})", xmax,
                   font=font)
            below += 360
        top_level = max([1.0] + [y for _, _, ys, _ in series_l for y in ys])
        _panel(draw, (0, below, width, height - foot), series_l, None,
               "curriculum level (the curriculum's, during each episode)", xmax, ylim=(-0.1, top_level + 0.1),
               font=font)
    else:
        _panel(draw, (0, head, width, height - foot), published + series_r, base_r, ret_label, xmax, font=font,
               bands=bands)
    x, y = 80, height - foot + 12
    for name, _, _, color in series_l:
        draw.line([(x, y), (x + 24, y)], fill=color, width=3)
        draw.text((x + 30, y), f"seed {name}", fill=(0, 0, 0), font=font, anchor="lm")
        x += 110
    if baseline:
        draw.line([(x, y), (x + 24, y)], fill=(0, 0, 0), width=2)
        draw.text((x + 30, y), "random policy", fill=(0, 0, 0), font=font, anchor="lm")
        x += 140
    if scored:
        draw.text((x, y), f"grey: threshold {threshold:g}", fill=(90, 90, 90), font=font, anchor="lm")
    x, y = 80, y + 22
    for method, count, color in references:
        draw.rectangle([x, y - 6, x + 24, y + 6], fill=_tint(color))
        draw.line([(x, y), (x + 24, y)], fill=color, width=3)
        label = f"{method} (published: mean of {count} seeds, min-max band)"
        draw.text((x + 30, y), label, fill=(0, 0, 0), font=font, anchor="lm")
        x += 50 + int(draw.textlength(label, font=font))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# ---------------------------------------------------------------------------
# Driver of the whole thing.


def train_seed(rundir: pathlib.Path, train_argv: list[str], seed: int, steps: int, minutes: float = 0.0) -> int:
    if (rundir / DONE).exists():
        print(f"seed {seed}: {rundir} already finished; not training again.", flush=True)
        return 0
    if rundir.exists():
        if not (rundir / EPISODES).exists() and any(rundir.iterdir()):
            raise SystemExit(f"error: {rundir} exists and is not a learn.py run directory; choose another --out.")
        shutil.rmtree(rundir)  # an unfinished learn.py run: its episode log cannot be resumed, start again
    argv = train_argv + ["--seed", str(seed), "--run.steps", str(steps)]
    command = [sys.executable, os.path.abspath(__file__), "--worker", str(rundir), str(minutes), "--", *argv]
    print("$ " + " ".join(command), flush=True)
    return subprocess.call(command)


def seed_dirs(out: pathlib.Path) -> list[int]:
    """The seeds with a run directory (`seed<N>`) in OUT, whichever learn.py process trained them."""
    if not out.is_dir():
        return []
    return sorted(int(d.name[4:]) for d in out.iterdir() if d.is_dir() and re.fullmatch(r"seed\d+", d.name))


def load_runs(out: pathlib.Path, seeds: Iterable[int]):
    runs, dones = {}, {}
    for seed in seeds:
        rundir = out / f"seed{seed}"
        runs[str(seed)] = read_episodes(rundir / EPISODES)
        if (rundir / DONE).exists():
            dones[str(seed)] = json.loads((rundir / DONE).read_text())
    return runs, dones


def load_baselines(out: pathlib.Path) -> dict[int, tuple[str, list[dict], dict | None]]:
    """level -> (name, episodes, done record) of every random baseline under `out`, in level order."""
    found = {}
    for path in sorted(out.iterdir()) if out.is_dir() else ():
        level = baseline_level(path.name)
        if level is None or not path.is_dir():
            continue
        episodes = read_episodes(path / EPISODES)
        if episodes:
            done = json.loads((path / DONE).read_text()) if (path / DONE).exists() else None
            found[level] = (path.name, episodes, done)
    return dict(sorted(found.items()))


def summary_table(summaries: Sequence[dict], threshold: float, scored: bool) -> str:
    """The summary rows for the console: success columns only for a task that has success."""
    columns = [("seed", "seed", 14)]
    if scored:
        columns += [("level", "at level", 8)]
    columns += [("episodes", "episodes", 8), ("env_steps", "env steps", 9), ("wall_s", "wall s", 8)]
    if scored:
        columns += [("steps_to_threshold", f"steps to {threshold:g}", 13), ("wall_s_to_threshold", "wall s to", 9),
                    ("final_success_rate", "success", 7)]
    columns += [("final_return", "return", 8)]
    if scored:
        columns += [("final_targets_per_min", "tgt/min", 7), ("mean_success_rate", "all succ", 8)]
    columns += [("mean_return", "all ret", 8), ("return_90k_100k", "ret 90k-100k", 12),
                ("return_last_10pct", "ret last 10%", 12)]
    if scored:
        columns += [("final_level", "final lvl", 9)]
    lines = [" ".join(f"{title:>{w}}" for _, title, w in columns)]
    lines += [" ".join(f"{str(s.get(key, '')):>{w}}" for key, _, w in columns) for s in summaries]
    return "\n".join(lines)


FINAL_EVAL = "final_eval"
FINAL_FIELDS = ("seed", "level", "policy", "episodes", "targets_per_min", "success_rate", "return_mean")


def final_eval_path(out: pathlib.Path, seed: int, level: int | None, policy: str) -> pathlib.Path:
    where = f"_level{level}" if level is not None else ""
    return out / FINAL_EVAL / f"seed{seed}{where}_{policy}.mp4"


def _eval_success_rate(scores: dict) -> float | str:
    """An eval JSON's success rate, recounted per episode by `_succeeded` (older JSONs under-count theirs)."""
    per_episode = scores.get("per_episode") or []
    if not per_episode or "success" not in per_episode[0]:
        return scores.get("success_rate", "")
    return _mean([_succeeded(e.get("success"), e.get("targets_reached")) for e in per_episode])


def final_eval(out: pathlib.Path, seeds: Sequence[int], levels: Sequence[int | None], episodes: int,
               baseline_seed: int, other_seeds: Sequence[int] = ()) -> list[dict]:
    """The final checkpoint of every seed, deterministic and stochastic, `episodes` episodes at each level
    (`python -m dreamer_rodent.eval`, one child process each; an existing result is kept), beside the random
    policy's baseline episodes at the same levels. Writes OUT/final_eval.csv and returns its rows.

    `other_seeds` (seeds another learn.py process trains into the same OUT) contribute the results they already
    have and are never evaluated here: that process evaluates its own seeds when its training ends, so the last
    process to finish writes a final_eval.csv with every seed."""
    for seed in seeds:  # this process's own seeds first: the others' results may arrive meanwhile
        if not (out / f"seed{seed}").exists():
            continue
        for level in levels:
            for policy in ("deterministic", "stochastic"):
                video = final_eval_path(out, seed, level, policy)
                if video.with_suffix(".json").exists():
                    continue
                print(f"final evaluation: seed {seed}, level {level}, {policy}, {episodes} episodes", flush=True)
                argv = [sys.executable, "-m", "dreamer_rodent.eval", "--checkpoint", str(out / f"seed{seed}"),
                        "--episodes", str(episodes), f"--{policy}", "--size", "160x120", "--out", str(video)]
                argv += ["--level", str(level)] if level is not None else []
                if subprocess.run(argv, stdout=subprocess.DEVNULL).returncode != 0:  # its error line is above
                    print(f"final evaluation of seed {seed} (level {level}, {policy}) failed; left out of "
                          f"final_eval.csv (rerun with --final-eval-only)", flush=True)
    rows = []
    for seed in sorted(set(seeds) | set(other_seeds)):
        for level in levels:
            for policy in ("deterministic", "stochastic"):
                result = final_eval_path(out, seed, level, policy).with_suffix(".json")
                if not result.exists():  # failed, or another process's seed not evaluated yet
                    continue
                scores = json.loads(result.read_text())
                rows.append({"seed": seed, "level": "" if level is None else level, "policy": policy,
                             "episodes": len(scores["per_episode"]),
                             "targets_per_min": (scores.get("targets_per_min") or {}).get("mean", ""),
                             "success_rate": _eval_success_rate(scores),
                             "return_mean": scores["return"]["mean"]})
    baselines = load_baselines(out)
    for level in levels:
        name, records, _ = baselines.get(0 if level is None else level, (None, [], None))
        if not records:
            continue

        means = {key: _mean([r.get(key) for r in records]) for key in ("targets_per_min", "success", "return")}
        means = {key: "" if value is None else value for key, value in means.items()}
        rows.append({"seed": baseline_seed, "level": "" if level is None else level, "policy": "random",
                     "episodes": len(records), "targets_per_min": means["targets_per_min"],
                     "success_rate": means["success"], "return_mean": means["return"]})
    with open(out / "final_eval.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FINAL_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def final_eval_table(rows: list[dict]) -> str:
    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = [" ".join(f"{name:>15}" for name in FINAL_FIELDS)]
    lines += [" ".join(f"{cell(row[name]):>15}" for name in FINAL_FIELDS) for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    full = list(argv)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    if argv[:1] == ["--worker"]:
        return _worker(argv[1], rest, float(argv[2]) if len(argv) > 2 else 0.0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="ball_goto")
    parser.add_argument("--steps", type=int, default=20000, help="env steps per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="wall-clock budget per seed, compilation included (0: none); the run stops at "
                             "whichever of --steps and --minutes comes first")
    parser.add_argument("--out", required=True, help="results directory (one run directory per seed in it)")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--window", type=int, default=20, help="episodes in the success-rate window")
    parser.add_argument("--level", type=int, default=0, help="curriculum level the curve and threshold use")
    parser.add_argument("--baseline-episodes", type=int, default=20,
                        help="random-policy episodes per baseline level (0: none)")
    parser.add_argument("--baseline-levels", type=int, nargs="+", default=[0], metavar="L",
                        help="curriculum levels to measure the random policy at, each pinned (default: 0); "
                             "OUT/random for level 0, OUT/random_level<L> for the others")
    parser.add_argument("--final-eval-episodes", type=int, default=0, metavar="N",
                        help="after training: each seed's final checkpoint, deterministic and stochastic, N episodes "
                             "at each --final-eval-levels level, beside the random policy there: OUT/final_eval.csv")
    parser.add_argument("--final-eval-levels", type=int, nargs="+", default=[0], metavar="L",
                        help="curriculum levels of the final evaluation (default: 0); the random baseline is run "
                             "at these levels too")
    parser.add_argument("--final-eval-only", action="store_true",
                        help="only the final evaluation (and missing baselines) of existing runs, then the plots")
    parser.add_argument("--plot-only", action="store_true", help="rebuild CSVs and plot from existing runs")
    parser.add_argument("--reference", metavar="CSV", default=None,
                        help="published curves to draw on the return plot (columns task,method,seed,env_steps,return; "
                             "e.g. ../shared/anchors/dmc_proprio_published.csv)")
    args = parser.parse_args(argv)
    if args.final_eval_only and args.final_eval_episodes < 1:
        raise SystemExit("error: --final-eval-only needs --final-eval-episodes N (N >= 1).")
    out = pathlib.Path(args.out)
    command_file = out / "command.json"
    if (args.final_eval_only or args.plot_only) and command_file.exists():
        saved = json.loads(command_file.read_text())  # the runs' own task and flags, not the defaults
        args.task, rest = saved["task"], list(saved["train_args"])
    curriculum = args.final_eval_episodes > 0 and has_curriculum(["--task", args.task, *rest])
    final_levels = list(dict.fromkeys(args.final_eval_levels)) if curriculum else [None]
    if args.final_eval_episodes > 0 and curriculum:  # the random policy is measured where the agent is
        args.baseline_levels = list(dict.fromkeys([*args.baseline_levels, *args.final_eval_levels]))
        args.baseline_episodes = args.baseline_episodes or args.final_eval_episodes
    train_argv = ["--task", args.task, *rest, "--run.progress", "False"]
    task, title = args.task, f"{args.task}: {' '.join(rest)}"
    reference = None
    if args.reference:  # checked before any training, so a wrong path costs nothing
        try:
            reference = read_reference(pathlib.Path(args.reference), task)
        except ReferenceFileError as error:
            raise SystemExit(f"error: {error}") from None
    if not args.plot_only and args.baseline_episodes > 0:  # a wrong level fails now, before any training
        check_baseline_levels(train_argv, args.baseline_levels)
    if not args.plot_only and not args.final_eval_only:
        out.mkdir(parents=True, exist_ok=True)
        command_file.write_text(json.dumps({"argv": ["eval/learn.py", *full],
                                            "task": args.task, "train_args": rest}) + "\n")

    if not args.plot_only:
        for seed in args.seeds if not args.final_eval_only else ():
            code = train_seed(out / f"seed{seed}", train_argv, seed, args.steps, args.minutes)
            if code != 0:
                print(f"seed {seed}: training exited with {code}", flush=True)
        for level in dict.fromkeys(args.baseline_levels) if args.baseline_episodes > 0 else ():
            name = baseline_name(level)
            # Seeds launched as separate processes (one core each) share OUT: the first to get here measures
            # the baseline, the others wait for it and then find it done.
            with baseline_lock(out / f"{name}.lock"):
                if not (out / name / DONE).exists():
                    print(f"random policy at level {level}: {args.baseline_episodes} episodes", flush=True)
                    random_baseline(train_argv + ["--seed", str(args.seeds[0])], out / name,
                                    args.baseline_episodes, level)

    # Seeds launched as separate learn.py processes into one OUT (one core each): every process's curve, summary
    # and final_eval.csv hold all of them, so the last one to write leaves the complete files.
    others = [seed for seed in seed_dirs(out) if seed not in args.seeds]
    runs, dones = load_runs(out, sorted({*args.seeds, *others}))
    baselines = load_baselines(out)
    all_runs, levels = dict(runs), {}
    for level, (name, episodes, done) in baselines.items():
        all_runs[name], levels[name] = episodes, level
        if done is not None:
            dones[name] = done
    summaries = write_csvs(out, all_runs, args.level, args.window, args.threshold, dones, reference, levels)
    # The dashed line: the random policy at the plotted level (else at level 0, as before baselines had levels).
    baseline = (baselines.get(args.level) or baselines.get(0) or (None, None, None))[1]
    plot(out / "curve.png", runs, args.level, args.window, args.threshold, title, baseline, reference)
    print("\n" + summary_table(summaries, args.threshold, has_success(all_runs)))
    print(f"\nWrote {out / 'curve.csv'}, {out / 'summary.csv'}, {out / 'curve.png'}", flush=True)
    if args.final_eval_episodes > 0 and not args.plot_only:
        rows = final_eval(out, args.seeds, final_levels, args.final_eval_episodes, args.seeds[0], others)
        print("\n" + final_eval_table(rows))
        print(f"\nWrote {out / 'final_eval.csv'} (videos and JSON in {out / FINAL_EVAL})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

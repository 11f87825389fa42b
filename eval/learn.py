"""Learning curves: train a task for a budget of env steps per seed and chart it.

    python eval/learn.py --task ball_goto --steps 20000 --seeds 0 1 2 --out eval/results/ball_goto \
        [--minutes M] [--threshold 0.9] [--window 20] [--level 0] [--baseline-episodes 20] [--plot-only] \
        [-- --configs size1m proprio_only --run.envs 1 --run.env_parallel none ...]

For each seed it runs `dreamer_rodent.train` in a child process (one run
directory per seed: OUT/seed<S>/, with the usual metrics.jsonl and
checkpoints) with a small hook around the driver that appends every finished
training episode to OUT/seed<S>/episodes.jsonl: env steps so far, wall-clock
seconds since the child started (compilation included), return, success (the
target was reached at least once: the task's targets_reached count > 0, which
also sees targets reached inside an action repeat), curriculum level and
targets reached.

The curve is the training episodes themselves (the stochastic training
policy, random actions during the prefill); checkpoints are not evaluated
separately, which on a 2-core CPU would cost as much as the training. A random
policy baseline (uniform actions, same task and config, `--baseline-episodes`
episodes) is rolled out once into OUT/random/episodes.jsonl.

Written to OUT:
  curve.csv    one row per episode and seed (seed "random" for the baseline), with
               the success rate and mean return over the last `--window` episodes at
               level `--level`
  summary.csv  one row per seed and one for the random policy: steps and
               wall-clock to the threshold, final (last window) and mean (all
               episodes at the level) success rate and return, level
  curve.png    success rate and return over the window against env steps, one
               line per seed, the random policy dashed

Steps-to-threshold: the env step at the end of the first episode at which the
success rate over the last `--window` episodes at level `--level` (only
episodes at that level count) reaches `--threshold`; empty if never.
A seed whose run directory holds a finished run (`learn_done.json`) is not
trained again; `--plot-only` only rebuilds the CSVs and plot from what is there.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
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


def _scores(episode: dict) -> dict:
    """An episode record of the driver -> the fields learn.py keeps.

    Success is the driver's (log/success seen at some step) or, where the task
    counts them, at least one target reached: with env.action_repeat > 1 the
    driver sees only the last sub-step's log/success, the count sees them all.
    """
    targets = episode.get("targets_reached")
    success = float(episode["success"] > 0 or (targets is not None and targets > 0))
    return {"return": episode["score"], "length": episode["length"], "success": success,
            "level": episode.get("curriculum_level", 0.0), "env": episode["env"],
            "targets": float("nan") if targets is None else targets}


def _worker(rundir: str, train_argv: list[str], minutes: float = 0.0) -> int:
    """Runs dreamer_rodent.train.main with Driver.step wrapped to log episodes.

    minutes > 0: a wall-clock budget; when it is spent the child sends itself
    SIGTERM, which train handles by saving a checkpoint and returning 0.
    """
    start = time.monotonic()
    if minutes > 0:
        import signal
        import threading

        def stop():
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # train's handler not installed yet
                again = threading.Timer(1.0, stop)
                again.daemon = True
                again.start()
            else:
                os.kill(os.getpid(), signal.SIGTERM)

        timer = threading.Timer(minutes * 60.0, stop)
        timer.daemon = True
        timer.start()
    from dreamer_rodent import driver as driver_lib
    from dreamer_rodent import train

    path = pathlib.Path(rundir) / EPISODES
    path.parent.mkdir(parents=True, exist_ok=True)
    out = open(path, "a", buffering=1)
    original = driver_lib.Driver.step
    steps = {"n": 0}

    def step(self, policy):
        transition, finished = original(self, policy)
        steps["n"] += self.num
        for episode in finished:
            record = {"env_steps": steps["n"], "wall_s": round(time.monotonic() - start, 3), **_scores(episode)}
            out.write(json.dumps(record) + "\n")
        return transition, finished

    driver_lib.Driver.step = step
    code = train.main(train_argv + ["--logdir", rundir])
    out.close()
    if code == 0:
        (pathlib.Path(rundir) / DONE).write_text(json.dumps({"wall_s": time.monotonic() - start,
                                                              "env_steps": steps["n"]}) + "\n")
    return code


def random_baseline(train_argv: list[str], out_dir: pathlib.Path, episodes: int) -> list[dict]:
    """Uniform random actions in the same task and config for `episodes` episodes."""
    from dreamer_rodent.config import parse_args
    from dreamer_rodent.driver import Driver
    from dreamer_rodent.parallel import BatchEnv

    config, _ = parse_args(train_argv)
    start = time.monotonic()
    envs = BatchEnv(config, parallel="none")
    records = []
    try:
        driver = Driver(envs, seed=int(config.seed) * 7919 + 1)
        n = 0
        while len(records) < episodes:
            _, finished = driver.step(driver.random_actions)
            n += driver.num
            for episode in finished:
                records.append({"env_steps": n, "wall_s": round(time.monotonic() - start, 3), **_scores(episode)})
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


def rolling(episodes: Sequence[dict], level: int, window: int) -> list[dict]:
    """Each episode with the success rate and mean return over the last `window` episodes at `level`.

    Episodes at other levels get the values of the last window (or None before
    the first episode at the level); `full` says the window holds `window` episodes.
    """
    recent: list[dict] = []
    rows = []
    for episode in episodes:
        if level_of(episode) == level:
            recent.append(episode)
            recent = recent[-window:]
        rate = sum(e["success"] for e in recent) / len(recent) if recent else None
        ret = sum(e["return"] for e in recent) / len(recent) if recent else None
        rows.append({**episode, "success_rate": rate, "return_mean": ret, "full": len(recent) == window})
    return rows


def steps_to_threshold(rows: Sequence[dict], threshold: float) -> dict | None:
    """The first row whose full window reaches `threshold` (its env_steps and wall_s), or None."""
    for row in rows:
        if row["full"] and row["success_rate"] is not None and row["success_rate"] >= threshold - 1e-9:
            return row
    return None


def summarize(name: str, episodes: Sequence[dict], level: int, window: int, threshold: float,
              done: dict | None = None) -> dict:
    rows = rolling(episodes, level, window)
    hit = steps_to_threshold(rows, threshold)
    at_level = [e for e in episodes if level_of(e) == level]
    last = at_level[-window:]
    return {
        "seed": name,
        "episodes": len(episodes),
        "episodes_at_level": len(at_level),
        "env_steps": (done or {}).get("env_steps", episodes[-1]["env_steps"] if episodes else 0),
        "wall_s": round((done or {}).get("wall_s", episodes[-1]["wall_s"] if episodes else 0.0), 1),
        "steps_to_threshold": hit["env_steps"] if hit else "",
        "wall_s_to_threshold": round(hit["wall_s"], 1) if hit else "",
        "final_success_rate": round(sum(e["success"] for e in last) / len(last), 3) if last else "",
        "final_return": round(sum(e["return"] for e in last) / len(last), 2) if last else "",
        "mean_success_rate": round(sum(e["success"] for e in at_level) / len(at_level), 3) if at_level else "",
        "mean_return": round(sum(e["return"] for e in at_level) / len(at_level), 2) if at_level else "",
        "final_level": level_of(episodes[-1]) if episodes else "",
        "max_level": max(level_of(e) for e in episodes) if episodes else "",
    }


CURVE_FIELDS = ["seed", "episode", "env_steps", "wall_s", "return", "success", "level", "length", "targets",
                "success_rate", "return_mean"]
SUMMARY_FIELDS = ["seed", "episodes", "episodes_at_level", "env_steps", "wall_s", "steps_to_threshold",
                  "wall_s_to_threshold", "final_success_rate", "final_return", "mean_success_rate", "mean_return",
                  "final_level", "max_level"]


def write_csvs(out: pathlib.Path, runs: dict[str, list[dict]], level: int, window: int, threshold: float,
               dones: dict[str, dict] | None = None) -> list[dict]:
    """curve.csv and summary.csv for `runs` (name -> episodes); returns the summary rows."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    with open(out / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CURVE_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for name, episodes in runs.items():
            for i, row in enumerate(rolling(episodes, level, window)):
                row = {**row, "seed": name, "episode": i}
                for key in ("success_rate", "return_mean"):
                    row[key] = "" if row[key] is None else round(row[key], 4)
                row["return"] = round(row["return"], 3)
                writer.writerow(row)
            summaries.append(summarize(name, episodes, level, window, threshold, (dones or {}).get(name)))
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(summaries)
    return summaries


# ---------------------------------------------------------------------------
# Plot with PIL (no matplotlib dependency).

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


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


def _panel(draw, box, series, baseline, ylabel, xmax, ylim=None, threshold=None, font=None):
    """One chart in `box` (x0, y0, x1, y1): series = [(name, xs, ys, color)], baseline = y or None."""
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 70, x1 - 15, y0 + 15, y1 - 45
    ys_all = [y for _, _, ys, _ in series for y in ys if y is not None]
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
         baseline: list[dict] | None = None) -> None:
    """curve.png: rolling success rate and return at `level`, and the curriculum level, against env steps per seed;
    random policy dashed."""
    from PIL import Image, ImageDraw

    import textwrap

    lines = textwrap.wrap(title, 120) or [""]
    head = 14 * len(lines) + 26
    width, height = 1000, 940 + head
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(13)
    for i, line in enumerate(lines):
        draw.text((width / 2, 8 + 14 * i), line, fill=(0, 0, 0), font=_font(12), anchor="mt")
    series_s, series_r, series_l = [], [], []
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
        series_l.append((name, xs, [float(level_of(e)) for e in episodes], color))
    base_s = base_r = None
    if baseline:
        at = [e for e in baseline if level_of(e) == level] or baseline
        base_s = sum(e["success"] for e in at) / len(at)
        base_r = sum(e["return"] for e in at) / len(at)
    _panel(draw, (0, head, width, head + 360), series_s, base_s, f"success rate (last {window} episodes at level {level})",
           xmax, ylim=(-0.02, 1.02), threshold=threshold, font=font)
    _panel(draw, (0, head + 360, width, head + 720), series_r, base_r, f"return (mean of last {window} at level {level})",
           xmax, font=font)
    top_level = max([1.0] + [y for _, _, ys, _ in series_l for y in ys])
    _panel(draw, (0, head + 720, width, height - 30), series_l, None, "curriculum level (of each episode)", xmax,
           ylim=(-0.1, top_level + 0.1), font=font)
    x = 80
    for name, _, _, color in series_s:
        draw.line([(x, height - 18), (x + 24, height - 18)], fill=color, width=3)
        draw.text((x + 30, height - 18), f"seed {name}", fill=(0, 0, 0), font=font, anchor="lm")
        x += 110
    if baseline:
        draw.line([(x, height - 18), (x + 24, height - 18)], fill=(0, 0, 0), width=2)
        draw.text((x + 30, height - 18), "random policy", fill=(0, 0, 0), font=font, anchor="lm")
        x += 140
    draw.text((x, height - 18), f"grey: threshold {threshold:g}", fill=(90, 90, 90), font=font, anchor="lm")
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


def load_runs(out: pathlib.Path, seeds: Iterable[int]):
    runs, dones = {}, {}
    for seed in seeds:
        rundir = out / f"seed{seed}"
        runs[str(seed)] = read_episodes(rundir / EPISODES)
        if (rundir / DONE).exists():
            dones[str(seed)] = json.loads((rundir / DONE).read_text())
    return runs, dones


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
    parser.add_argument("--baseline-episodes", type=int, default=20, help="random-policy episodes (0: none)")
    parser.add_argument("--plot-only", action="store_true", help="rebuild CSVs and plot from existing runs")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    train_argv = ["--task", args.task, *rest, "--run.progress", "False"]
    command_file = out / "command.json"
    if not args.plot_only:
        out.mkdir(parents=True, exist_ok=True)
        command_file.write_text(json.dumps({"argv": ["eval/learn.py", *full],
                                            "task": args.task, "train_args": rest}) + "\n")
    title = f"{args.task}: {' '.join(rest)}"
    if args.plot_only and command_file.exists():
        saved = json.loads(command_file.read_text())
        title = f"{saved['task']}: {' '.join(saved['train_args'])}"

    if not args.plot_only:
        for seed in args.seeds:
            code = train_seed(out / f"seed{seed}", train_argv, seed, args.steps, args.minutes)
            if code != 0:
                print(f"seed {seed}: training exited with {code}", flush=True)
        if args.baseline_episodes > 0 and not (out / "random" / DONE).exists():
            print(f"random policy: {args.baseline_episodes} episodes", flush=True)
            random_baseline(train_argv + ["--seed", str(args.seeds[0])], out / "random", args.baseline_episodes)

    runs, dones = load_runs(out, args.seeds)
    baseline = read_episodes(out / "random" / EPISODES)
    all_runs = dict(runs)
    if baseline:
        all_runs["random"] = baseline
        if (out / "random" / DONE).exists():
            dones["random"] = json.loads((out / "random" / DONE).read_text())
    summaries = write_csvs(out, all_runs, args.level, args.window, args.threshold, dones)
    plot(out / "curve.png", runs, args.level, args.window, args.threshold, title, baseline)
    print(f"\n{'seed':>7} {'episodes':>8} {'env steps':>9} {'wall s':>8} {'steps to ' + format(args.threshold, 'g'):>13} "
          f"{'wall s to':>9} {'success':>7} {'return':>8} {'all succ':>8} {'all ret':>8} {'level':>5}")
    for s in summaries:
        print(f"{s['seed']:>7} {s['episodes']:>8} {s['env_steps']:>9} {s['wall_s']:>8} {str(s['steps_to_threshold']):>13} "
              f"{str(s['wall_s_to_threshold']):>9} {str(s['final_success_rate']):>7} {str(s['final_return']):>8} "
              f"{str(s['mean_success_rate']):>8} {str(s['mean_return']):>8} "
              f"{str(s['final_level']):>5}")
    print(f"\nWrote {out / 'curve.csv'}, {out / 'summary.csv'}, {out / 'curve.png'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

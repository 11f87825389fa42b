"""eval/learn.py's own logic on synthetic episodes: rolling rates, threshold, CSVs, plot."""

import csv
import json
import pathlib
import types

import pytest

from eval_scripts import load_script

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def learn():
    return load_script("eval/learn.py")


def episodes(successes, level=0, length=100, start=0):
    return [{"env_steps": start + (i + 1) * length, "wall_s": float(i + 1), "return": 10.0 * s + i, "success": float(s),
             "level": float(level), "length": length, "targets": float(s)} for i, s in enumerate(successes)]


def test_threshold_is_first_full_window_at_or_above(learn):
    run = episodes([0, 0, 1, 1, 1, 1, 0, 1])
    rows = learn.rolling(run, level=0, window=4)
    assert [r["full"] for r in rows] == [False, False, False, True, True, True, True, True]
    assert rows[3]["success_rate"] == pytest.approx(0.5)
    assert rows[5]["success_rate"] == pytest.approx(1.0)
    hit = learn.steps_to_threshold(rows, 0.9)
    assert hit["env_steps"] == 600 and hit["wall_s"] == 6.0
    # A window that is not full never counts, even at 100%.
    assert learn.steps_to_threshold(learn.rolling(episodes([1, 1, 1]), 0, 4), 0.9) is None


def test_only_episodes_at_the_level_count(learn):
    run = episodes([1, 1]) + episodes([0, 0, 0], level=1, start=200) + episodes([1, 1], start=500)
    rows = learn.rolling(run, level=0, window=4)
    assert [r["full"] for r in rows] == [False, False, False, False, False, False, True]
    assert rows[-1]["success_rate"] == 1.0
    assert learn.steps_to_threshold(rows, 0.9)["env_steps"] == 700
    # At level 1 the rate is that of the level-1 episodes only.
    assert learn.rolling(run, level=1, window=3)[4]["success_rate"] == 0.0


def test_csvs_summary_and_plot(learn, tmp_path):
    runs = {"0": episodes([0] * 5 + [1] * 10), "1": episodes([0] * 15), "random": episodes([0, 1, 0, 0])}
    summaries = learn.write_csvs(tmp_path, runs, level=0, window=5, threshold=0.9,
                                 dones={"0": {"env_steps": 1500, "wall_s": 20.0}})
    by_seed = {s["seed"]: s for s in summaries}
    assert by_seed["0"]["steps_to_threshold"] == 1000 and by_seed["0"]["final_success_rate"] == 1.0
    assert by_seed["0"]["wall_s"] == 20.0
    assert by_seed["1"]["steps_to_threshold"] == "" and by_seed["1"]["final_success_rate"] == 0.0
    assert by_seed["random"]["final_success_rate"] == 0.25
    assert by_seed["0"]["mean_success_rate"] == round(10 / 15, 3)
    with open(tmp_path / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 + 15 + 4
    assert rows[9]["seed"] == "0" and float(rows[9]["success_rate"]) == 1.0
    with open(tmp_path / "summary.csv") as f:
        assert [r["seed"] for r in csv.DictReader(f)] == ["0", "1", "random"]
    learn.plot(tmp_path / "curve.png", {k: v for k, v in runs.items() if k != "random"}, 0, 5, 0.9, "synthetic",
               baseline=runs["random"])
    from PIL import Image

    image = Image.open(tmp_path / "curve.png")
    assert image.size[0] == 1000 and image.size[1] > 720
    assert len(set(image.getdata())) > 3  # lines drawn, not a blank canvas


def test_plot_only_reads_run_dirs(learn, tmp_path, capsys):
    for seed, successes in ((0, [0, 1, 1, 1]), (1, [0, 0, 1, 1])):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / learn.EPISODES).write_text("".join(json.dumps(e) + "\n" for e in episodes(successes)) + '{"cut')
        (d / learn.DONE).write_text(json.dumps({"env_steps": 400, "wall_s": 9.0}))
    assert learn.main(["--out", str(tmp_path), "--seeds", "0", "1", "--window", "2", "--plot-only"]) == 0
    with open(tmp_path / "summary.csv") as f:
        rows = {r["seed"]: r for r in csv.DictReader(f)}
    assert rows["0"]["steps_to_threshold"] == "300" and rows["1"]["steps_to_threshold"] == "400"
    assert (tmp_path / "curve.png").exists()


def test_success_counts_targets_reached_inside_an_action_repeat(learn):
    base = {"score": 1.0, "length": 10, "env": 0, "curriculum_level": 2.0}
    assert learn._scores({**base, "success": 0.0, "targets_reached": 1.0})["success"] == 1.0
    assert learn._scores({**base, "success": 1.0, "targets_reached": 0.0})["success"] == 1.0
    assert learn._scores({**base, "success": 0.0, "targets_reached": 0.0})["success"] == 0.0
    record = learn._scores({**base, "success": 0.0})  # a task without a target count
    assert record["success"] == 0.0 and record["level"] == 2.0 and record["return"] == 1.0


def test_final_eval_success_rate_counts_targets_an_older_eval_json_missed(learn):
    """An eval JSON written before the adapter carried a mid-repeat reach into log/success: 2 of 3 episodes reached
    a target, one of them only mid-repeat; the rate is 2/3, not the JSON's 1/3. A suite task's JSON keeps its own."""
    episodes = [{"success": True, "targets_reached": 1}, {"success": False, "targets_reached": 2},
                {"success": False, "targets_reached": 0}]
    assert learn._eval_success_rate({"success_rate": 1 / 3, "per_episode": episodes}) == pytest.approx(2 / 3)
    assert learn._eval_success_rate({"per_episode": [{"return": 1.0}]}) == ""


class FakeClock:
    """Seconds that advance by `tick` on every reading: the budget logic runs without waiting or depending on speed."""

    def __init__(self, tick=1.0):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        value = self.now
        self.now += self.tick
        return value


def test_budget_is_spent_at_the_first_reading_past_it(learn):
    assert not learn.budget_spent(10.0, 69.9, minutes=1)
    assert learn.budget_spent(10.0, 70.0, minutes=1)
    assert not learn.budget_spent(0.0, 1e9, minutes=0)  # 0: no budget


def test_episode_hook_logs_episodes_on_its_clock_and_stops_once_when_the_budget_is_spent(learn):
    import io
    import types

    episode = {"score": 2.0, "length": 3, "env": 1, "success": 1.0, "curriculum_level": 0.0}
    results = iter([(None, []), (None, [episode]), (None, []), (None, [episode]), (None, [])])
    driver = types.SimpleNamespace(num=2, env=types.SimpleNamespace(obs_space={"log/success": None}))
    out, stops = io.StringIO(), []
    clock = FakeClock(tick=20.0)  # 20 s per env step: a 1-minute budget is spent at the 3rd step
    step = learn.episode_hook(lambda self, policy: next(results), out, clock, clock(), minutes=1.0, stop=stops.append)
    for _ in range(5):
        step(driver, None)
    assert stops == [6]  # once, at the step that found the budget spent, with the env steps taken
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["env_steps"], r["wall_s"], r["success"]) for r in records] == [(4, 40.0, 1.0), (8, 80.0, 1.0)]
    assert step.steps["n"] == 10
    never = learn.episode_hook(lambda self, policy: (None, []), io.StringIO(), FakeClock(1e6), 0.0, 0.0, stops.append)
    never(driver, None)
    assert stops == [6]  # no budget: never stopped


def test_minutes_budget_stops_a_real_run_early_and_keeps_its_episodes(learn, tmp_path):
    """The worker with a fake clock (1 s per env step): a 0.5-minute budget ends the run at env step ~30 x envs
    by SIGTERM, which train handles by saving and returning 0, however fast this machine is."""
    from dreamer_rodent import driver as driver_lib

    real_step = driver_lib.Driver.step
    rundir = tmp_path / "seed0"
    code = learn._worker(str(rundir), ["--task", "ball_goto", "--configs", "debug", "proprio_only",
                                       "--env.time_limit", "0.2", "--run.prefill", "1000", "--run.steps", "1000000",
                                       "--run.env_parallel", "none", "--run.progress", "False"],
                         minutes=0.5, clock=FakeClock(tick=1.0))
    assert code == 0
    assert driver_lib.Driver.step is real_step  # the hook is removed again
    done = json.loads((rundir / learn.DONE).read_text())
    assert 30 * 2 <= done["env_steps"] <= 32 * 2  # 2 envs (debug); the stop lands within a step or two of it
    episodes = learn.read_episodes(rundir / learn.EPISODES)
    assert episodes and all(e["wall_s"] <= 32 and float(e["wall_s"]).is_integer() for e in episodes)  # fake seconds
    assert (rundir / "checkpoints" / f"ckpt_{done['env_steps']:09d}").is_dir()  # the SIGTERM save


def test_minutes_reach_the_worker(learn, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(learn.subprocess, "call", lambda command: calls.append(command) or 0)
    assert learn.train_seed(tmp_path / "seed3", ["--task", "ball_goto"], seed=3, steps=500, minutes=0.25) == 0
    command = calls[0]
    assert command[2:5] == ["--worker", str(tmp_path / "seed3"), "0.25"]
    assert command[command.index("--run.steps") + 1] == "500" and command[command.index("--seed") + 1] == "3"
    monkeypatch.setattr(learn, "_worker", lambda rundir, argv, minutes: calls.append((rundir, argv, minutes)) or 0)
    assert learn.main(command[2:]) == 0
    assert calls[1] == (str(tmp_path / "seed3"), command[command.index("--") + 1:], 0.25)


def returns_only(returns, length=1000, start=0):
    """Episodes of a task without success (the suite benchmarks): success is None."""
    return [{"env_steps": start + (i + 1) * length, "wall_s": float(i + 1), "return": float(r), "success": None,
             "level": 0.0, "length": length, "targets": float("nan")} for i, r in enumerate(returns)]


def test_a_task_without_success_scores_none(learn):
    record = learn._scores({"score": 300.0, "length": 1000, "env": 0, "success": 0.0}, has_success=False)
    assert record["success"] is None and record["return"] == 300.0


def test_return_only_csvs_have_no_success_columns_and_the_100k_return(learn, tmp_path):
    runs = {"0": returns_only(range(100)), "1": returns_only([5.0] * 95), "random": returns_only([1.0, 3.0])}
    summaries = learn.write_csvs(tmp_path, runs, level=0, window=10, threshold=0.9)
    with open(tmp_path / "summary.csv") as f:
        reader = csv.DictReader(f)
        rows = {r["seed"]: r for r in reader}
        assert not learn.SUCCESS_FIELDS & set(reader.fieldnames)
    assert float(rows["0"]["return_90k_100k"]) == sum(range(90, 100)) / 10  # episodes ending at 91k..100k
    assert float(rows["0"]["return_last_10pct"]) == sum(range(90, 100)) / 10
    assert float(rows["0"]["final_return"]) == sum(range(90, 100)) / 10
    assert float(rows["1"]["return_90k_100k"]) == 5.0  # 91k..95k
    assert rows["random"]["return_90k_100k"] == ""  # no episode ended there
    assert float(rows["random"]["return_last_10pct"]) == 3.0
    with open(tmp_path / "curve.csv") as f:
        reader = csv.DictReader(f)
        assert not {"success", "success_rate", "targets"} & set(reader.fieldnames)
        assert float(list(reader)[99]["return_mean"]) == sum(range(90, 100)) / 10
    assert "success" not in learn.summary_table(summaries, 0.9, scored=False)
    learn.plot(tmp_path / "curve.png", {"0": runs["0"], "1": runs["1"]}, 0, 10, 0.9, "returns",
               baseline=runs["random"])
    from PIL import Image

    image = Image.open(tmp_path / "curve.png")
    assert image.size[0] == 1000 and image.size[1] < 720  # the return panel alone, no success or level panels


def _reference_csv(path):
    rows = ["task,method,seed,env_steps,return"]
    for seed, offset in ((0, 0.0), (1, 100.0)):
        rows += [f"dmc_cartpole_swingup,dreamerv3,{seed},{x},{x / 200 + offset}" for x in range(10000, 210000, 10000)]
        rows += [f"dmc_cartpole_swingup,ppo,{seed},{x},{x / 1000 + offset}" for x in range(10000, 210000, 10000)]
    rows += ["dmc_reacher_easy,dreamerv3,0,10000,5.0"]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_reference_draws_each_method_and_adds_its_100k_return(learn, tmp_path):
    reference = _reference_csv(tmp_path / "ref.csv")
    run = tmp_path / "out" / "seed0"
    run.mkdir(parents=True)
    (run / learn.EPISODES).write_text("".join(json.dumps(e) + "\n" for e in returns_only(range(100))))
    (tmp_path / "out" / "command.json").write_text(json.dumps({"task": "dmc_cartpole_swingup", "train_args": []}))
    assert learn.main(["--out", str(tmp_path / "out"), "--seeds", "0", "--window", "10", "--plot-only",
                       "--reference", str(reference)]) == 0
    with open(tmp_path / "out" / "summary.csv") as f:
        rows = {r["seed"]: r for r in csv.DictReader(f)}
    assert float(rows["ref:dreamerv3"]["return_90k_100k"]) == 100000 / 200 + 50.0  # mean of the seeds at 100k
    assert float(rows["ref:ppo"]["return_90k_100k"]) == 100.0 + 50.0
    xs, means, lows, highs = learn.reference_band(learn.read_reference(reference, "dmc_cartpole_swingup")["ppo"],
                                                  xmax=100000)
    assert xs[-1] == 100000 and means[0] == 60.0 and lows[0] == 10.0 and highs[0] == 110.0
    from PIL import Image

    import numpy as np

    pixels = set(map(tuple, np.asarray(Image.open(tmp_path / "out" / "curve.png").convert("RGB")).reshape(-1, 3)))
    for color in learn.REFERENCE_COLORS[:2]:
        assert color in pixels and learn._tint(color) in pixels  # each method's mean line and its band


def test_bad_reference_is_an_error_before_training(learn, tmp_path):
    reference = _reference_csv(tmp_path / "ref.csv")
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit, match=r"error: --reference .*missing.csv does not exist"):
        learn.main(["--task", "dmc_cartpole_swingup", "--out", out, "--reference", str(tmp_path / "missing.csv")])
    with pytest.raises(SystemExit, match=r"error: .*no rows for task 'dmc_walker_walk'.*dmc_cartpole_swingup"):
        learn.main(["--task", "dmc_walker_walk", "--out", out, "--reference", str(reference)])
    (tmp_path / "cols.csv").write_text("task,method,steps,return\n")
    with pytest.raises(SystemExit, match=r"error: .*lacks the column\(s\) \['seed', 'env_steps'\]"):
        learn.main(["--task", "dmc_walker_walk", "--out", out, "--reference", str(tmp_path / "cols.csv")])
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_published_anchor_at_100k(learn):
    anchors = ROOT.parent / "shared" / "anchors" / "dmc_proprio_published.csv"
    if not anchors.exists():
        pytest.skip(f"{anchors} is not in this checkout's neighbourhood")
    reference = learn.read_reference(anchors, "dmc_cartpole_swingup")
    assert set(reference) == {"dreamerv3", "ppo"} and len(reference["dreamerv3"]) == 5
    xs, means, _, _ = learn.reference_band(reference["dreamerv3"])
    assert round(means[xs.index(100000)]) == 528  # the anchors README's DreamerV3 mean at 100k


def test_a_suite_task_trains_into_return_only_results(learn, tmp_path):
    """The episode hook and the random baseline record no success for a task without log/success."""
    code = learn.main(["--task", "dmc_cartpole_swingup", "--steps", "300", "--seeds", "0", "--out", str(tmp_path),
                       "--baseline-episodes", "1", "--window", "2", "--",
                       "--configs", "debug", "--env.time_limit", "1", "--run.env_parallel", "none"])
    assert code == 0
    for run in ("seed0", "random"):
        episodes = learn.read_episodes(tmp_path / run / learn.EPISODES)
        assert episodes and all(e["success"] is None and e["length"] == 100 for e in episodes), run
    with open(tmp_path / "summary.csv") as f:
        reader = csv.DictReader(f)
        assert [r["seed"] for r in reader] == ["0", "random"]
        assert "return_90k_100k" in reader.fieldnames and not learn.SUCCESS_FIELDS & set(reader.fieldnames)


def test_scores_keep_the_reach_rate_and_the_episode_level(learn):
    base = {"score": 1.0, "length": 250, "env": 0, "success": 1.0, "targets_reached": 3.0, "curriculum_level": 2.0,
            "curriculum_episode_level": 0.0, "curriculum_easy": 1.0, "targets_per_min": 18.0, "first_reach_s": 2.5}
    record = learn._scores(base)
    assert record["targets_per_min"] == 18.0 and record["first_reach_s"] == 2.5
    assert record["level"] == 0.0 and record["curriculum_level"] == 2.0 and record["easy"] == 1.0
    none = learn._scores({**base, "targets_reached": 0.0, "success": 0.0, "targets_per_min": 0.0,
                          "first_reach_s": float("nan")})
    assert none["first_reach_s"] is None  # strict JSON in episodes.jsonl: null, not NaN
    assert json.loads(json.dumps(none, allow_nan=True))["first_reach_s"] is None


def test_reach_rate_columns_and_panel(learn, tmp_path):
    run = episodes([0, 1, 1, 1])
    for e, rate, first in zip(run, [0.0, 6.0, 12.0, 18.0], [None, 3.0, 2.0, 1.0]):
        e.update(targets_per_min=rate, first_reach_s=first, curriculum_level=0.0, easy=0.0)
    easy = {**episodes([1], start=400)[0], "level": 0.0, "curriculum_level": 1.0, "easy": 1.0,
            "targets_per_min": 30.0, "first_reach_s": 0.5}
    summaries = learn.write_csvs(tmp_path, {"0": run + [easy]}, level=0, window=2, threshold=0.9)
    (row,) = summaries
    assert row["final_targets_per_min"] == 24.0  # the last 2 episodes at level 0 (the easy one is at level 0)
    assert row["mean_targets_per_min"] == pytest.approx(13.2)
    assert row["mean_first_reach_s"] == pytest.approx(1.62)  # over the episodes that reached a target
    assert row["level"] == 0 and row["final_level"] == 1 and row["easy_episodes"] == 1
    with open(tmp_path / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["first_reach_s"] == "" and float(rows[3]["targets_per_min_mean"]) == 15.0
    assert rows[4]["curriculum_level"] == "1.0" and rows[4]["level"] == "0.0"
    learn.plot(tmp_path / "curve.png", {"0": run + [easy]}, 0, 2, 0.9, "rate")
    from PIL import Image

    assert Image.open(tmp_path / "curve.png").size[1] > 1080  # a fourth panel: targets per minute


def test_baseline_levels_measure_the_random_policy_at_each_level(learn, tmp_path):
    """--baseline-levels 0 1 2 on ball_goto: three random baselines, each pinned, each in the summary with its level."""
    seed = tmp_path / "seed0"  # a finished seed, so that only the baselines run
    seed.mkdir()
    (seed / learn.EPISODES).write_text("".join(json.dumps(e) + "\n" for e in episodes([0, 1, 1])))
    (seed / learn.DONE).write_text(json.dumps({"env_steps": 300, "wall_s": 3.0}))
    flags = ["--configs", "debug", "proprio_only", "--env.time_limit", "0.2", "--run.envs", "1",
             "--run.env_parallel", "none"]
    argv = ["--task", "ball_goto", "--steps", "300", "--seeds", "0", "--out", str(tmp_path), "--window", "2",
            "--baseline-episodes", "2", "--baseline-levels", "0", "1", "2", "--", *flags]
    assert learn.main(argv) == 0
    for name, level in (("random", 0), ("random_level1", 1), ("random_level2", 2)):
        records = learn.read_episodes(tmp_path / name / learn.EPISODES)
        assert len(records) == 2 and all(e["level"] == level and e["easy"] == 0.0 for e in records), name
        assert all(e["targets_per_min"] >= 0 and e["length"] == 10 for e in records)
    with open(tmp_path / "summary.csv") as f:
        rows = {r["seed"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["0", "random", "random_level1", "random_level2"]
    assert [rows[k]["level"] for k in rows] == ["0", "0", "1", "2"]
    assert all(rows[k]["episodes_at_level"] == "2" for k in ("random", "random_level1", "random_level2"))
    # Rerun and --plot-only find the baselines again; nothing is rolled out twice.
    mtime = (tmp_path / "random_level2" / learn.EPISODES).stat().st_mtime_ns
    assert learn.main(argv) == 0 and learn.main(["--out", str(tmp_path), "--seeds", "0", "--plot-only"]) == 0
    assert (tmp_path / "random_level2" / learn.EPISODES).stat().st_mtime_ns == mtime
    with open(tmp_path / "summary.csv") as f:
        assert [r["level"] for r in csv.DictReader(f)] == ["0", "0", "1", "2"]


def test_seeds_launched_as_separate_processes_measure_the_shared_baseline_once(learn, tmp_path):
    """Two learn.py processes (one seed each, one core each) into one OUT: one measures the random baseline, the
    other waits for it and finds it done (both used to roll it out into the same files at once)."""
    import subprocess
    import sys

    for seed, successes in (("0", [0, 1]), ("1", [1, 1])):
        run = tmp_path / f"seed{seed}"  # finished seeds, so that only the baseline runs
        run.mkdir()
        (run / learn.EPISODES).write_text("".join(json.dumps(e) + "\n" for e in episodes(successes)))
        (run / learn.DONE).write_text(json.dumps({"env_steps": 200, "wall_s": 2.0}))
    flags = ["--configs", "debug", "proprio_only", "--env.time_limit", "0.2", "--run.envs", "1",
             "--run.env_parallel", "none"]
    script = pathlib.Path(learn.__file__)
    procs = [subprocess.Popen([sys.executable, str(script), "--task", "ball_goto", "--steps", "200", "--seeds", seed,
                               "--out", str(tmp_path), "--window", "2", "--baseline-episodes", "3", "--", *flags],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=script.parent.parent)
             for seed in ("0", "1")]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("random policy at level 0: 3 episodes" in out for out in outputs) == 1, outputs
    assert len(learn.read_episodes(tmp_path / "random" / learn.EPISODES)) == 3


def test_a_baseline_level_the_config_lacks_is_an_error_before_training(learn, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"error: --baseline-levels 5: the config has 5 curriculum levels \(0-4"):
        learn.main(["--task", "ball_goto", "--out", str(out), "--baseline-levels", "0", "5"])
    assert not out.exists()


def test_final_eval_measures_the_checkpoint_both_ways_beside_random_at_each_level(learn, tmp_path):
    """--final-eval-episodes on a tiny ball_goto run: final_eval.csv in the issue's columns, then --final-eval-only
    finds every result again and rolls nothing out twice."""
    flags = ["--configs", "debug", "proprio_only", "--env.time_limit", "0.2", "--run.envs", "1",
             "--run.env_parallel", "none", "--run.prefill", "20"]
    argv = ["--task", "ball_goto", "--steps", "30", "--seeds", "0", "--out", str(tmp_path), "--baseline-episodes", "0",
            "--final-eval-episodes", "2", "--final-eval-levels", "1", "--", *flags]
    assert learn.main(argv) == 0
    with open(tmp_path / "final_eval.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == learn.FINAL_FIELDS
        rows = list(reader)
    assert [(r["seed"], r["level"], r["policy"]) for r in rows] == [
        ("0", "1", "deterministic"), ("0", "1", "stochastic"), ("0", "1", "random")]
    for row in rows:  # the random baseline ran at level 1 although --baseline-episodes was 0
        assert row["episodes"] == "2" and 0.0 <= float(row["success_rate"]) <= 1.0
        assert float(row["targets_per_min"]) >= 0.0 and row["return_mean"] != ""
    scores = json.loads((tmp_path / learn.FINAL_EVAL / "seed0_level1_stochastic.json").read_text())
    assert scores["settings"]["level"] == 1 and scores["settings"]["deterministic"] is False
    video = tmp_path / learn.FINAL_EVAL / "seed0_level1_deterministic.mp4"
    mtime = video.stat().st_mtime_ns
    assert learn.main(["--final-eval-only", *argv]) == 0
    assert video.stat().st_mtime_ns == mtime
    with open(tmp_path / "final_eval.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    with pytest.raises(SystemExit, match="--final-eval-only needs --final-eval-episodes"):
        learn.main(["--out", str(tmp_path), "--final-eval-only"])


def test_seeds_of_separate_processes_all_reach_the_summary_and_final_eval(learn, tmp_path, monkeypatch):
    """`--seeds 0` and `--seeds 1` as two processes into one OUT: whichever writes last writes every seed's rows
    (each used to overwrite summary.csv, curve.png and final_eval.csv with its own seeds only). A seed of another
    process contributes the final results it has and is never evaluated by this one."""
    for seed, successes in ((0, [0, 1, 1, 1]), (1, [0, 0, 1, 1])):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        (run / learn.EPISODES).write_text("".join(json.dumps(e) + "\n" for e in episodes(successes)))
    (tmp_path / "seed_notes").mkdir()  # not a seed directory
    assert learn.seed_dirs(tmp_path) == [0, 1]
    assert learn.main(["--out", str(tmp_path), "--seeds", "1", "--window", "2", "--plot-only"]) == 0
    with open(tmp_path / "summary.csv") as f:
        assert [r["seed"] for r in csv.DictReader(f)] == ["0", "1"]

    def result(seed, policy, rate):
        path = learn.final_eval_path(tmp_path, seed, 0, policy).with_suffix(".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"per_episode": [{}, {}], "targets_per_min": {"mean": rate},
                                    "success_rate": 0.5, "return": {"mean": -1.0}}))

    result(1, "deterministic", 6.0)
    result(0, "deterministic", 3.0)  # the other process's seed: its stochastic result is not there yet
    evaluated = []

    def evaluate(argv, **kwargs):  # this process evaluates its seed 1; meanwhile the other one finishes seed 0
        evaluated.append(argv[argv.index("--checkpoint") + 1])
        result(1, "stochastic", 7.0)
        result(0, "stochastic", 5.0)
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(learn.subprocess, "run", evaluate)
    rows = learn.final_eval(tmp_path, [1], [0], 2, 1, other_seeds=[0])
    assert evaluated == [str(tmp_path / "seed1")]  # never the other process's seed
    assert [(r["seed"], r["policy"], r["targets_per_min"]) for r in rows] == [
        (0, "deterministic", 3.0), (0, "stochastic", 5.0), (1, "deterministic", 6.0), (1, "stochastic", 7.0)]
    with open(tmp_path / "final_eval.csv") as f:
        assert len(list(csv.DictReader(f))) == 4

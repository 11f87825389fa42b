"""eval/learn.py's own logic on synthetic episodes: rolling rates, threshold, CSVs, plot."""

import csv
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def learn():
    spec = importlib.util.spec_from_file_location("learn", ROOT / "eval" / "learn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_minutes_budget_stops_a_run_early_and_keeps_its_episodes(learn, tmp_path):
    """--minutes ends training by SIGTERM (train saves and exits 0) long before --steps."""
    code = learn.main(["--task", "ball_goto", "--steps", "1000000", "--minutes", "0.4", "--seeds", "0",
                       "--out", str(tmp_path), "--baseline-episodes", "0", "--",
                       "--configs", "debug", "proprio_only", "--env.time_limit", "1", "--run.prefill", "64"])
    assert code == 0
    done = json.loads((tmp_path / "seed0" / learn.DONE).read_text())
    assert 0 < done["env_steps"] < 1000000 and done["wall_s"] < 120
    assert learn.read_episodes(tmp_path / "seed0" / learn.EPISODES)  # 1 s episodes: some finished
    assert list((tmp_path / "seed0" / "checkpoints").glob("ckpt_*"))  # the SIGTERM save

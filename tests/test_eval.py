"""Checkpoint to video and scores, end to end on a tiny real training run; bad input gives clear errors."""

import json
import shutil

import imageio.v2 as imageio
import numpy as np
import pytest

from dreamer_rodent import eval as evaluation
from dreamer_rodent import overlay, rollout
from dreamer_rodent import scores as scores_lib
from dreamer_rodent import train
from dreamer_rodent.config import build_config

TIME_LIMIT = 0.3  # seconds of simulated time per eval episode
STEPS = 15  # TIME_LIMIT / 20 ms control step
SCORE_FIELDS = {"mean", "std", "min", "max"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run directory from the training entry point: ball_goto, debug model, one env.

    Training stops at the end of prefill (no gradient updates) so the whole eval
    suite stays within its time budget; eval does not care how good the weights are.
    """
    logdir = tmp_path_factory.mktemp("runs") / "ball"
    code = train.main([
        "--task", "ball_goto", "--configs", "debug", "--logdir", str(logdir),
        "--run.steps", "20", "--run.prefill", "20", "--run.envs", "1", "--run.env_parallel", "none",
        "--env.time_limit", "0.5", "--run.progress", "false", "--logging.tensorboard", "false",
    ])
    assert code == 0
    return logdir


def _read(path):
    reader = imageio.get_reader(str(path))
    try:
        return reader.count_frames(), reader.get_data(STEPS // 2), reader.get_meta_data()["fps"]
    finally:
        reader.close()


def test_eval_writes_video_and_scores(run_dir, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    code = evaluation.main([
        "--checkpoint", str(run_dir), "--episodes", "2", "--size", "97x64", "--level", "1",
        "--env.time_limit", str(TIME_LIMIT), "--out", str(out),
    ])
    assert code == 0
    frames, frame, fps = _read(out)
    assert frames == 2 * (STEPS + 1)  # each episode: its first observation, then one frame per step
    assert frame.shape == (64, 98, 3)  # odd width made even
    assert fps == pytest.approx(50)  # 1 / 20 ms control step: real time
    # The egocentric inset (16x16 in the debug preset) sits top-right inside a white 2-pixel border.
    x1, y0 = 98 - 6 - 1, 6
    assert frame[y0 + 2 : y0 + 18, x1].mean() > 180 and frame[y0, x1 - 18 : x1].mean() > 180
    scores = json.loads(out.with_suffix(".json").read_text())
    assert SCORE_FIELDS <= set(scores["return"]) and SCORE_FIELDS <= set(scores["length"])
    assert scores["length"]["mean"] == STEPS and 0.0 <= scores["success_rate"] <= 1.0
    episodes = scores["per_episode"]
    assert [e["episode"] for e in episodes] == [1, 2]
    assert [e["length"] for e in episodes] == [STEPS, STEPS]
    assert all(e["level"] == 1 for e in episodes)  # --level reached the env's curriculum
    assert all(e["final_distance"] is not None for e in episodes)
    returns = [e["return"] for e in episodes]
    assert scores["return"]["mean"] == pytest.approx(np.mean(returns))
    assert scores["return"]["min"] == pytest.approx(min(returns)) and scores["return"]["std"] == pytest.approx(np.std(returns))
    assert scores["settings"]["level"] == 1 and scores["settings"]["size"] == [98, 64]
    assert scores["frames"] == frames and scores["videos"] == [str(out)]
    printed = capsys.readouterr().out
    assert "success_rate" in printed and str(out.with_suffix(".json")) in printed


def test_split_dream_and_default_output(run_dir):
    checkpoint = run_dir / "checkpoints" / "ckpt_000000020"  # one checkpoint, not the run directory
    code = evaluation.main([
        "--checkpoint", str(checkpoint), "--episodes", "2", "--size", "96x72", "--split", "--dream", "--stochastic",
        "--env.time_limit", str(TIME_LIMIT),
    ])
    assert code == 0
    # Default: <run>/eval/<checkpoint>_<level the training reached>_<mode>_seed<seed>, also from a checkpoint path.
    stem = run_dir / "eval" / "ckpt_000000020_level0_stoch_seed0"
    for episode in (1, 2):
        frames, frame, _ = _read(stem.with_name(stem.name + f"_ep{episode:03d}.mp4"))
        assert frames == STEPS + 1 and frame.shape == (72, 96, 3)
    frames, frame, _ = _read(stem.with_name(stem.name + "_dream.mp4"))
    assert frames == STEPS + 1  # the whole (short) episodes were predicted
    assert frame.shape[1] == 3 * 16 * 6  # truth | prediction | error, 16 px upscaled 6x
    assert frame.shape[0] > 2 * 96  # one row per episode
    scores = json.loads(stem.with_suffix(".json").read_text())
    assert scores["settings"]["deterministic"] is False and len(scores["videos"]) == 2
    assert scores["dream_video"].endswith("_dream.mp4")


def _fails(argv, capsys, *needles):
    code = evaluation.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_missing_path_and_directory_without_checkpoint(tmp_path, capsys):
    _fails(["--checkpoint", str(tmp_path / "nope")], capsys, "does not exist", "run directory")
    _fails(["--checkpoint", str(tmp_path)], capsys, "no checkpoint in")
    run = tmp_path / "fresh_run"
    run.mkdir()
    build_config(["debug"]).save(run / "config.yaml")  # a run that has not saved yet
    _fails(["--checkpoint", str(run)], capsys, "has no checkpoint yet")


def test_corrupt_checkpoint_is_reported_and_left_in_place(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval"))
    latest = copy / "checkpoints" / (copy / "checkpoints" / "latest").read_text().strip()
    data = bytearray((latest / "agent.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (latest / "agent.npz").write_bytes(bytes(data))
    _fails(["--checkpoint", str(copy)], capsys, "corrupt", "agent.npz")
    assert latest.exists()  # eval never renames or deletes anything in a run


def test_bad_settings_name_the_fix(run_dir, capsys):
    base = ["--checkpoint", str(run_dir)]
    _fails(base + ["--camera", "nope"], capsys, "unknown camera 'nope'", "walker/side")
    _fails(base + ["--level", "9"], capsys, "--level 9 does not exist", "5 levels")
    _fails(base + ["--size", "4000x3000"], capsys, "offscreen framebuffer")
    _fails(base + ["--env.time_limt", "3"], capsys, "env.time_limit")
    _fails(base + ["--episodes", "0"], capsys, "--episodes must be at least 1")
    _fails(base + ["--out", "clip.avi"], capsys, "must end in .mp4")


def test_summary_statistics_and_pinned_settings():
    episodes = [rollout.Episode(0, ret=1.0, length=10, success=True),
                rollout.Episode(1, ret=3.0, length=20, success=False),
                rollout.Episode(2, ret=8.0, length=30, success=True)]
    scores = scores_lib.summarize(episodes)
    assert scores["return"] == pytest.approx({"mean": 4.0, "std": np.std([1, 3, 8]), "min": 1.0, "max": 8.0})
    assert scores["length"]["mean"] == 20 and scores["success_rate"] == pytest.approx(2 / 3)
    assert "final_distance" not in scores and "targets_per_min" not in scores  # no such metric: no empty field
    assert all("final_distance" not in e and "level" not in e for e in scores["per_episode"])
    assert "final dist" not in scores_lib.format_table(scores) and "success" in scores_lib.format_table(scores)
    episode = rollout.Episode(0)
    for step, height in enumerate([0.1, 0.3, float("nan"), 0.2]):  # a task's own metric, NaN steps left out
        rollout.accumulate(episode, {"reward": 1.0, "log/height": np.float32(height)}, step)
    assert episode.scores()["metrics"]["height"] == pytest.approx({"mean": 0.2, "std": np.std([0.1, 0.3, 0.2]),
                                                                  "min": 0.1, "max": 0.3}, rel=1e-6)
    both = scores_lib.summarize([episode, episode])
    assert both["metrics"]["height"]["mean"] == pytest.approx(0.2) and "log/height" in scores_lib.format_table(both)
    assert "height 0.25" in overlay.frame_text(episode, 1, {"reward": 0.0, "log/height": 0.25}, 3)  # overlay
    run = build_config(["debug"])
    config = evaluation.eval_config(run, evaluation.parse_eval_args(["--checkpoint", "x", "--distance", "0.4", "--seed", "7"]))
    assert config.task_kwargs.curriculum_levels == (0.4,) and config.task_kwargs.level == 0 and config.seed == 7
    config = evaluation.eval_config(run, evaluation.parse_eval_args(["--checkpoint", "x"]), trained_level=3)
    assert config.task_kwargs.level == 3  # default: where training got to
    saved = {"policy_key": np.array([0, 42], np.uint32), "w": np.ones(2)}
    one, two = evaluation._reseed_policy(saved, 1), evaluation._reseed_policy(saved, 2)
    assert not np.array_equal(one["policy_key"], two["policy_key"]) and one["policy_key"].dtype == np.uint32
    assert one["w"] is saved["w"] and np.array_equal(evaluation._reseed_policy(saved, 1)["policy_key"], one["policy_key"])

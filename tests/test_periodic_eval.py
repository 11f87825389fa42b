"""Evaluation during training (run.eval_every): fixed episodes, pinned levels, the best checkpoint kept."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dreamer_rodent import train
from dreamer_rodent.config import build_config
from dreamer_rodent.env import make_env
from dreamer_rodent.periodic_eval import EvalResult, PeriodicEval

ROOT = pathlib.Path(__file__).resolve().parent.parent


class ScriptedAgent:
    """A fixed function of the target vector (no learning); records the policy modes it was asked for."""

    def __init__(self, gain=1.0):
        self.gain = gain
        self.modes = set()

    def init_policy(self, size):
        return np.zeros(size)

    def policy(self, carry, obs, mode="train"):
        self.modes.add(mode)
        target = np.asarray(obs["target"], np.float32).reshape(-1)
        action = np.zeros(3, np.float32)  # the ball has 3 actuators (tasks/walkers/ball.py)
        action[: min(2, target.size)] = np.clip(self.gain * target[:2], -1, 1)
        return carry, {"action": action[None]}


def _config(**flags):
    return build_config(["debug"], {"task": "ball_goto", "env.time_limit": 1.0, "run.eval_every": 60,
                                    "run.eval_episodes": 2, **flags})


def test_every_evaluation_sees_the_same_episodes_at_its_pinned_level_with_the_deterministic_policy():
    evaluator = PeriodicEval(_config(**{"run.eval_levels": [0, 2]}), make_env)
    agent = ScriptedAgent()
    first = evaluator.evaluate(agent)
    second = evaluator.evaluate(agent)
    assert agent.modes == {"eval"}
    assert set(first.episodes) == {0, 2}
    for level, episodes in first.episodes.items():
        assert len(episodes) == 2 and all(e.level == level for e in episodes), level
        assert all(m == pytest.approx(0.0) for e in episodes for m in e.metrics["curriculum_easy"])
    # The same spawns and targets every time: the same policy scores the same.
    assert first.metrics == second.metrics
    for key in ["eval/level0/return", "eval/level0/targets_per_min", "eval/level0/success", "eval/level2/return",
                "eval/score"]:
        assert key in first.metrics, key
    assert first.score == pytest.approx(np.mean([first.metrics["eval/level0/targets_per_min"],
                                                 first.metrics["eval/level2/targets_per_min"]]))
    # Another policy on the same episodes scores differently (the numbers come from the rollouts).
    still = evaluator.evaluate(ScriptedAgent(gain=0.0))
    assert still.metrics["eval/level0/return"] != first.metrics["eval/level0/return"]
    # A stop (Ctrl-C) between two episodes ends the evaluation without a result.
    calls = []
    assert evaluator.evaluate(agent, stop=lambda: calls.append(1) or len(calls) > 1) is None
    assert len(calls) == 2


def test_a_task_without_a_curriculum_is_evaluated_once_as_it_is():
    config = build_config([], {"task": "dmc_cartpole_swingup", "run.eval_every": 60, "run.eval_episodes": 1,
                               "run.eval_levels": [0, 1], "env.keys": ["proprio"], "env.time_limit": 1.0})

    class Zero(ScriptedAgent):
        def policy(self, carry, obs, mode="train"):
            self.modes.add(mode)
            return carry, {"action": np.zeros((1, 1), np.float32)}

    evaluator = PeriodicEval(config, make_env)
    result = evaluator.evaluate(Zero())
    assert list(result.episodes) == [None]
    assert "eval/return" in result.metrics and "eval/targets_per_min" not in result.metrics
    assert result.score == result.metrics["eval/return"]
    # A resume with the same settings keeps the best (the levels asked for are what is compared).
    evaluator.mark_best(result, 100)
    resumed = PeriodicEval(config, make_env)
    assert resumed.load_state_dict(json.loads(json.dumps(evaluator.state_dict()))) is None
    assert resumed.best == result.score and resumed.best_step == 100


def test_the_best_is_the_highest_score_and_the_return_breaks_ties():
    evaluator = PeriodicEval(_config(), make_env)

    def result(score, ret):
        return EvalResult(score, ret, {}, "", {})

    assert evaluator.is_best(result(0.0, -5.0))
    evaluator.mark_best(result(0.0, -5.0), 100)
    assert not evaluator.is_best(result(0.0, -6.0))
    assert evaluator.is_best(result(0.0, -4.0))
    evaluator.mark_best(result(6.0, -4.0), 200)
    assert not evaluator.is_best(result(5.9, 100.0))
    assert not evaluator.is_best(result(float("nan"), 0.0))
    restored = PeriodicEval(_config(), make_env)
    restored.load_state_dict(json.loads(json.dumps(evaluator.state_dict())))
    assert (restored.best, restored.best_return, restored.best_step) == (6.0, -4.0, 200)
    assert not restored.is_best(result(6.0, -4.0))
    # Other evaluation settings: the scores do not compare, the best starts afresh (and says so).
    other = PeriodicEval(_config(**{"run.eval_levels": [1]}), make_env)
    note = other.load_state_dict(evaluator.state_dict())
    assert "levels [0]" in note and "afresh" in note
    assert other.best is None and other.is_best(result(0.0, -100.0))


@pytest.mark.parametrize("flags, words", [
    (["--run.eval_levels", "9"], "run.eval_levels [9] do not exist"),
    (["--run.eval_episodes", "0"], "run.eval_episodes"),
    (["--run.eval_every", "-1"], "run.eval_every"),
])
def test_bad_eval_settings_are_one_error_line(tmp_path, capsys, flags, words):
    rundir = tmp_path / "run"
    assert train.main(["--task", "ball_goto", "--configs", "debug", "--logdir", str(rundir), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and words in err and "Traceback" not in err
    assert not rundir.exists()


def _train(args):
    return subprocess.run([sys.executable, "-m", "dreamer_rodent.train", "--task", "ball_goto", "--configs", "debug",
                           "--env.time_limit", "1.0", "--run.progress", "false", "--run.eval_every", "1",
                           "--run.eval_episodes", "1", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_a_run_logs_evaluations_keeps_the_best_checkpoint_and_a_resume_keeps_the_best_score(tmp_path):
    rundir = tmp_path / "run"
    first = _train(["--logdir", str(rundir), "--run.steps", "200"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Evaluating the deterministic policy every 1 s: 1 episode at level(s) [0]" in first.stdout
    assert "Evaluation, deterministic policy" in first.stdout
    lines = [json.loads(x) for x in (rundir / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "eval/score" in x]
    assert evals, "no evaluation was logged"
    assert all("eval/return" in x and "eval/targets_per_min" in x for x in evals)
    best_score = max(x["eval/score"] for x in evals)
    assert evals[-1]["eval/best_score"] == best_score

    best = rundir / "checkpoints" / "best"
    state = json.loads((best / "state.json").read_text())
    latest = json.loads((rundir / "checkpoints" / "ckpt_000000200" / "state.json").read_text())
    assert latest["eval"]["best"] == best_score
    assert state["counters"]["env_steps"] == latest["eval"]["best_step"]
    assert "checkpoints/best" in first.stdout

    # The eval command takes it like any checkpoint; it is neither pruned nor resumed from.
    out = tmp_path / "best.mp4"
    result = subprocess.run([sys.executable, "-m", "dreamer_rodent.eval", "--checkpoint", str(best), "--episodes", "1",
                             "--deterministic", "--size", "64x48", "--out", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(out.with_suffix(".json").read_text())["env_steps"] == latest["eval"]["best_step"]

    second = _train(["--logdir", str(rundir), "--run.steps", "300", "--run.keep_checkpoints", "1"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resumed from" in second.stdout and "ckpt_000000200" in second.stdout
    lines = [json.loads(x) for x in (rundir / "metrics.jsonl").read_text().splitlines()]
    after = [x for x in lines if "eval/score" in x and x["step"] > 200]
    assert after, "no evaluation after the resume"
    # The resumed run remembers the best score: its best never drops below the first run's.
    assert all(x["eval/best_score"] >= best_score for x in after)
    assert all(x["eval/best_score"] == max([best_score] + [y["eval/score"] for y in after if y["step"] <= x["step"]])
               for x in after)
    assert best.is_dir() and sorted(p.name for p in (rundir / "checkpoints").glob("ckpt_*")) == ["ckpt_000000300"]


def test_a_crash_between_the_two_renames_of_save_best_leaves_the_previous_best(tmp_path):
    from dreamer_rodent import checkpoint as ckpt

    saver = ckpt.Checkpointer(tmp_path, keep=1)
    config = _config()
    arrays = {"w": np.arange(3.0)}
    saver.save_best(10, arrays, {"eval": {"best": 1.0, "best_step": 10}}, config)
    saver.save_best(20, {"w": np.arange(3.0) + 1}, {"eval": {"best": 2.0, "best_step": 20}}, config)
    assert saver.best_record()["best"] == 2.0 and not (tmp_path / "checkpoints" / ckpt.BEST_PREVIOUS).exists()
    # As if killed right after the first rename: only best.previous (complete) and a staged copy remain.
    os.rename(tmp_path / "checkpoints" / ckpt.BEST, tmp_path / "checkpoints" / ckpt.BEST_PREVIOUS)
    saver.save(30, arrays, {}, config)  # a regular checkpoint prunes leftovers: the best must survive it
    assert saver.best_record()["best"] == 2.0
    loaded = ckpt.load(tmp_path / "checkpoints" / ckpt.BEST)
    assert loaded.step == 20 and np.array_equal(loaded.arrays["w"], np.arange(3.0) + 1)
    assert [p.name for p in saver.list()] == ["ckpt_000000030"]

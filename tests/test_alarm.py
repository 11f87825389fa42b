"""The model-exploitation alarm: when it warns, when it clears, and the gap to the real episodes' reward."""

import pytest

from dreamer_rodent.alarm import ExploitationAlarm, real_reward_gap


def _interval(excess):
    return {"train/alarm/reward_excess": excess, "train/alarm/return_gap": 2.0}


def test_the_alarm_warns_once_after_patience_intervals_above_zero_and_says_when_it_clears():
    lines = []
    alarm = ExploitationAlarm(lines.append, patience=3)
    assert [alarm.update(i, _interval(x)) for i, x in enumerate([0.1, 0.2, -0.1, 0.1, 0.1])] == [0.0] * 5
    assert lines == []  # two in a row, then a break: no warning
    assert alarm.update(5, _interval(0.3)) == 1.0
    assert len(lines) == 1 and "env step 5" in lines[0] and "for 3 log intervals" in lines[0]
    assert alarm.update(6, _interval(0.3)) == 1.0 and len(lines) == 1  # one warning per episode of alarm
    assert alarm.update(7, {"episode/score": 1.0}) == 1.0  # an interval without updates changes nothing
    assert alarm.update(8, _interval(-0.01)) == 0.0
    assert len(lines) == 2 and lines[1].startswith("note: the exploitation alarm cleared at env step 8")


def test_real_reward_gap_is_imagined_minus_the_episodes_reward_per_step():
    metrics = {"train/imag/reward": 0.05, "episode/score": -25.0, "episode/length": 250.0}
    assert real_reward_gap(metrics) == pytest.approx(0.05 - (-0.1))
    assert real_reward_gap({"train/imag/reward": 0.05}) is None  # no finished episode in the interval
    assert real_reward_gap({"episode/score": -25.0, "episode/length": 250.0}) is None  # no update


def test_the_exploitation_analysis_counts_bursts_real_gaps_and_the_std_at_1k_updates(tmp_path, capsys):
    import json

    from eval_scripts import load_script

    analysis = load_script("eval/analysis/exploitation.py")
    # (imagined, replayed head, episode score over 100 steps, std) per interval; 500 updates apart
    series = [(-0.5, -0.5, -50, 0.9), (0.1, -0.2, -10, 0.8), (0.2, -0.2, -30, 0.7), (0.1, 0.1, 10, 0.6),
              (0.3, -0.1, -20, 0.5), (0.3, -0.1, -20, 0.4), (0.3, -0.1, -20, 0.5)]
    lines = [json.dumps({"step": 100, "checkpoint/seconds": 0.1})]
    for i, (imag, head, score, std) in enumerate(series):
        lines.append(json.dumps({"step": 1000 * (i + 1), "counters/train_steps": 500 * (i + 1),
                                 "train/imag/reward": imag, "train/wm/reward_pred": head, "episode/score": score,
                                 "episode/length": 100, "train/actor/std": std}))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(lines) + "\n")
    summary = analysis.summarize(analysis.intervals(metrics), gap=0.25)
    assert summary["intervals"] == 7 and summary["updates"] == 3500
    assert summary["burst_intervals"] == 5 and summary["burst_longest"] == 3
    # real gaps: 0, 0.2, 0.5, 0, 0.5, 0.5, 0.5 -> longest run above 0.25 is 3
    assert summary["real_gap_max"] == pytest.approx(0.5) and summary["real_gap_longest"] == 3
    assert summary["std_at_1k_updates"] == 0.8 and summary["std_min"] == 0.4  # the first interval at 1,000
    assert analysis.main([str(metrics)]) == 0
    assert "| 7000 | 3500 | 7 | 5 | 3 |" in capsys.readouterr().out
    assert analysis.main([str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("error: ")

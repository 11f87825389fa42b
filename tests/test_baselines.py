"""eval/baselines/sb3.py: its episodes are recorded in eval/learn.py's format (SB3 itself is an optional extra)."""

import pytest

from eval_scripts import load_script


def _load(name, path):
    return load_script(path, name)


def test_vector_env_steps_become_learn_py_episode_records():
    sb3 = _load("sb3_baseline", "eval/baselines/sb3.py")
    learn = _load("learn", "eval/learn.py")
    recorder = sb3.EpisodeRecorder(2)
    info = lambda success, reached, level: {"log/success": success, "log/targets_reached": reached,  # noqa: E731
                                            "log/curriculum_level": level, "log/curriculum_episode_level": 0.0,
                                            "log/curriculum_easy": 1.0, "log/targets_per_min": 6.0 * reached}
    assert recorder.step([1.0, 2.0], [False, False], [info(0, 0, 1), info(0, 0, 1)]) == []
    finished = recorder.step([1.5, 0.5], [True, False], [info(1, 1, 1), info(0, 0, 1)])
    assert len(finished) == 1 and finished[0]["env"] == 0 and finished[0]["score"] == 2.5
    record = learn._scores(finished[0])
    assert record["return"] == 2.5 and record["length"] == 2 and record["success"] == 1.0
    assert record["level"] == 0.0 and record["curriculum_level"] == 1.0 and record["easy"] == 1.0
    assert record["targets_per_min"] == 6.0 and record["first_reach_s"] is None  # no value: never reached
    finished = recorder.step([0.0, 1.0], [True, True], [info(0, 0, 1), info(0, 0, 2)])
    assert [e["env"] for e in finished] == [0, 1] and finished[0]["length"] == 1 and finished[1]["length"] == 3
    assert learn._scores(finished[1])["success"] == 0.0


def test_without_stable_baselines3_it_says_how_to_install(monkeypatch, capsys):
    sb3 = _load("sb3_baseline", "eval/baselines/sb3.py")
    import builtins

    real = builtins.__import__

    def no_sb3(name, *args, **kwargs):
        if name.startswith("stable_baselines3"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sb3)
    assert sb3.main(["--algo", "sac", "--task", "ball_goto", "--out", "unused"]) == 2
    assert "pip install -e '.[baselines]'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sb3.main(["--algo", "dqn", "--task", "ball_goto", "--out", "unused"])

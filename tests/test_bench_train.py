"""eval/bench_train.py: its rows (presets joined by '+', ':key=value' settings) reach the real loop; a bad row is
one error line before anything runs."""

import pytest

from eval_scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("eval/bench_train.py")


def test_a_row_names_presets_and_settings(bench):
    assert bench.row_args("cpu_small+proprio_only:run.collect_ahead=16") == [
        "--configs", "cpu_small", "proprio_only", "--run.collect_ahead", "16"]
    assert bench.row_args("debug") == ["--configs", "debug"]
    with pytest.raises(ValueError, match="not key=value"):
        bench.row_args("debug:run.collect_ahead")


def test_a_row_with_the_collector_times_the_real_loop(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench.main(["--task", "ball_goto", "--presets", "debug+proprio_only:run.collect_ahead=8", "--envs", "0",
                       "--warmup", "96", "--steps", "64", "--prefill", "32", "--json", str(out)]) == 0
    import json

    (row,) = json.loads(out.read_text())["rows"]
    assert row["preset"] == "debug+proprio_only:run.collect_ahead=8"
    assert row["window_env_steps"] == 64 and row["env_steps_per_s"] > 0 and row["replayed_steps_per_s"] > 0
    assert row["envs"] == 2  # the debug preset's run.envs, kept by --envs 0
    assert "| debug+proprio_only:run.collect_ahead=8 |" in capsys.readouterr().out


@pytest.mark.parametrize("row", ["debug:run.collect_ahed=8", "debug:run.collect_ahead=-1"])
def test_a_bad_row_stops_before_anything_is_measured(bench, capsys, row):
    assert bench.main(["--task", "ball_goto", "--presets", "debug", row]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: row '{row}'") and err.count("\n") == 1

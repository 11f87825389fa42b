"""eval/bench_agent.py's row syntax: the keys a row sets reach the agent's config; a bad row is an error line."""

import pytest

from eval_scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("eval/bench_agent.py")


def test_a_row_sets_config_keys_by_their_types(bench):
    preset, dtype, kind, config, sets = bench.parse_row("debug:float32:proprio:reinforce:agent.imag_last=8")
    assert (preset, dtype, kind, sets) == ("debug", "float32", "proprio", "agent.imag_last=8")
    assert config.agent.imag_last == 8 and config.agent.actor_grad == "reinforce"
    _, _, _, config, sets = bench.parse_row("debug:float32:image")
    assert sets == "" and config.agent.imag_last == 0


@pytest.mark.parametrize("row,words", [("debug:float32", "is not preset:dtype:obs"),
                                       ("debug:float32:proprio:agent.imag_lst=8", "imag_last")])
def test_a_bad_row_is_one_error_line_with_exit_code_2(bench, capsys, row, words):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_row(row)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1


def test_a_bad_row_anywhere_stops_before_anything_is_measured(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--rows", "debug:float32:proprio", "debug:float32:proprio:agent.imag_last=x", "--no-counts"])
    assert exit_info.value.code == 2
    out = capsys.readouterr()
    assert "imag_last" in out.err and "| debug |" not in out.out


def test_walker_rows_have_upstreams_inputs(bench):
    obs, act = bench.spaces("walker_image", 64)
    assert obs["proprio"].shape == (24,) and obs["image"].shape == (64, 64, 3) and act["action"].shape == (6,)
    obs, _ = bench.spaces("walker", 64)
    assert "image" not in obs


@pytest.mark.parametrize("rows,words", [(["debug:float32:walker"], "expected a checkout of danijar/dreamerv3"),
                                        (["debug:float32:proprio"], "obs walker or walker_image")])
def test_the_side_by_side_checks_the_checkout_and_the_rows_first(bench, capsys, tmp_path, rows, words):
    if "proprio" in rows[0]:  # a checkout that looks right, so the row is what fails
        (tmp_path / "dreamerv3").mkdir()
        (tmp_path / "dreamerv3" / "agent.py").write_text("")
        (tmp_path / ".venv" / "bin").mkdir(parents=True)
        (tmp_path / ".venv" / "bin" / "python").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--rows", *rows, "--upstream", str(tmp_path), "--no-counts"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1

"""The command lines' help and their answers to bad input: one `error:` line, exit 2, nothing written.

Nothing here builds an env or an agent: each command stops at help, at a check, or at the device lookup.
"""

import glob
import os
import pathlib
import subprocess
import sys

import pytest

from dreamer_rodent import cli_help, distributed
from dreamer_rodent import eval as eval_cli
from dreamer_rodent import train
from dreamer_rodent.config import CONFIGS_PATH, ConfigError, build_config, load_presets

ROOT = pathlib.Path(__file__).resolve().parent.parent
HAS_GPU = bool(glob.glob("/dev/nvidia[0-9]*"))


def _run(module, args, timeout=120, **env):
    environ = dict(os.environ, PYTHONUNBUFFERED="1", **env)
    environ.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=timeout)


# ---- --help ----------------------------------------------------------------


def test_train_help_shows_usage_presets_and_every_key(capsys):
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    for form in ("usage: python -m dreamer_rodent.train", "--task NAME", "--configs", "--KEY VALUE", "--logdir DIR"):
        assert form in out, form
    lines = out.splitlines()
    # Every preset has one line with what it does: its comment in configs.yaml, or the keys it sets.
    presets = [name for name in load_presets() if name != "defaults"]
    for name in presets:
        line = next((x for x in lines if x.split()[:1] == [name]), None)
        assert line is not None and len(line.split()) > 1, name
    assert "Tiny model, tiny batches, 16x16 images" in next(x for x in lines if x.split()[:1] == ["debug"])
    assert "sets agent (rssm" in next(x for x in lines if x.split()[:1] == ["size12m"])
    assert "--task rodent_goto" in next(x for x in lines if x.split()[:1] == ["rodent_goto"])
    # Every config key, with its type, its default and the comment configs.yaml gives it.
    rows = {x.split()[0]: x for x in lines if x.startswith("    ") and x.split()}
    for key in build_config([]).flat():
        assert key in rows, key
    steps = rows["run.steps"].split()
    assert steps[1:3] == ["float", "1.0e6"] and "env steps to train" in rows["run.steps"]
    assert rows["env.keys"].split()[1] == "list[str]" and "[image, vestibular, proprio, task]" in rows["env.keys"]
    assert "console progress bar" in rows["run.progress"] and rows["run.progress"].split()[1:3] == ["bool", "true"]
    # Grouped by section, with the section's own comment.
    assert any(x.startswith("  agent.opt: the world model's optimiser") for x in lines)
    assert lines.index("  run") < lines.index("  jax")

    assert train.main(["-h"]) == 0
    assert capsys.readouterr().out == out


def test_train_help_prefix_narrows_the_keys_and_names_the_closest_for_a_typo(capsys):
    assert train.main(["--task", "rodent_goto", "--help", "agent.opt"]) == 0
    out = capsys.readouterr().out
    keys = [x.split()[0] for x in out.splitlines() if x.startswith("    ")]
    assert keys and all(k.startswith("agent.opt.") for k in keys) and "agent.opt.lr" in keys
    assert "usage:" not in out

    assert train.main(["--help=run.steps"]) == 0
    assert [x.split()[0] for x in capsys.readouterr().out.splitlines() if x.startswith("    ")] == ["run.steps"]

    assert train.main(["--help", "agent.optt"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "'agent.optt'" in captured.err and "Did you mean 'agent.opt'?" in captured.err


def test_help_from_the_command_line_exits_zero():
    result = _run("dreamer_rodent.train", ["--help"])
    assert result.returncode == 0 and result.stderr == ""
    assert "usage: python -m dreamer_rodent.train" in result.stdout and "run.prefill" in result.stdout
    result = _run("dreamer_rodent.eval", ["--help"])
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "--checkpoint" in result.stdout and "env.time_limit" in result.stdout


def test_eval_help_lists_its_options_and_the_config_keys_it_can_override(capsys):
    assert eval_cli.main(["--help"]) == 0  # no SystemExit from argparse
    out = capsys.readouterr().out
    for option in ("--checkpoint", "--episodes", "--level", "--distance", "--dream"):
        assert option in out, option
    assert "env.time_limit" in out and "jax.platform" in out
    assert eval_cli.main(["--checkpoint", "somewhere", "-h", "env"]) == 0
    keys = [x.split()[0] for x in capsys.readouterr().out.splitlines() if x.startswith("    ")]
    assert keys and all(k.startswith("env.") for k in keys)
    assert eval_cli.main(["--help", "envv"]) == 2
    assert "Did you mean 'env'?" in capsys.readouterr().err


def test_read_comments_of_the_shipped_configs():
    doc = cli_help.read_comments(CONFIGS_PATH.read_text())
    assert doc.line_comments["defaults.run.steps"] == "env steps to train"
    assert doc.line_comments["defaults.logdir"].startswith("empty: a new timestamped directory")
    assert doc.sections["size12m"].startswith("Model sizes") and doc.sections["dmc_proprio"].startswith("Benchmark")
    assert "defaults.agent.rec_scales" in doc.above_comments


# ---- run.steps at or below run.prefill ---------------------------------------


def test_steps_not_above_prefill_is_a_loud_warning_at_start(monkeypatch, capsys, tmp_path):
    warnings = train.config_warnings(build_config(["debug"], {"run.steps": 64}))
    assert len(warnings) == 1 and "no update" in warnings[0]
    assert "--run.steps above 64" in warnings[0] and "--run.prefill" in warnings[0]
    assert train.config_warnings(build_config(["debug"], {"run.steps": 65})) == []

    def stop(config):  # stop before devices, envs and the agent
        raise train.RunError("stopped by the test")

    monkeypatch.setattr(train.distributed, "setup", stop)
    rundir = tmp_path / "run"
    assert train.main(["--task", "ball_goto", "--configs", "debug", "--run.steps", "10", "--logdir", str(rundir)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: run.steps=10 is not above run.prefill=64") and err[1] == "error: stopped by the test"
    assert not rundir.exists()


def test_many_more_env_workers_than_cores_and_a_gpu_sized_model_on_a_cpu_get_a_note(monkeypatch):
    monkeypatch.setattr(train.os, "cpu_count", lambda: 2)
    notes = train.config_warnings(build_config(["debug"], {"run.envs": 9, "run.env_parallel": "process"}))
    assert len(notes) == 1 and "run.envs=9 worker processes on 2 cores" in notes[0] and "--run.envs 2" in notes[0]
    assert train.config_warnings(build_config(["debug"], {"run.envs": 8, "run.env_parallel": "process"})) == []
    assert train.config_warnings(build_config(["debug"], {"run.envs": 9, "run.env_parallel": "none"})) == []
    note = train.platform_notes(build_config([], {"task": "rodent_goto"}), "cpu")
    assert len(note) == 1 and "sized for a GPU" in note[0] and "--configs cpu_small proprio_only" in note[0]
    assert train.platform_notes(build_config([], {"task": "rodent_goto"}), "gpu") == []
    assert train.platform_notes(build_config(["cpu_small"], {"task": "rodent_goto"}), "cpu") == []


# ---- --jax.platform gpu without a GPU ----------------------------------------


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU")
def test_gpu_platform_without_a_gpu_is_one_error_line(tmp_path):
    rundir = tmp_path / "run"
    result = _run("dreamer_rodent.train", ["--task", "ball_goto", "--configs", "debug", "--jax.platform", "gpu",
                                          "--logdir", str(rundir)])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    err = result.stderr
    assert err.startswith("error: jax.platform=gpu but JAX sees no GPU here (installed JAX backends: cpu")
    assert 'pip install -e ".[cuda12]"' in err and "nvidia-smi" in err and "--jax.platform cpu" in err
    assert not rundir.exists()


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU")
def test_gpu_device_lookup_without_jax_platforms_set_says_the_same():
    # eval looks the device up without setting jax_platforms; JAX then raises a RuntimeError, not an assert.
    with pytest.raises(ConfigError, match=r"jax.platform=gpu but JAX sees no GPU here .*JAX says: .*--jax.platform cpu"):
        distributed.local_devices(build_config(["debug"], {"jax.platform": "gpu"}))


# ---- a configs.yaml that is not valid YAML -------------------------------------


def _broken_configs(tmp_path):
    text = CONFIGS_PATH.read_text()
    good = "    keys: [image, vestibular, proprio, task]"
    assert good in text
    broken = tmp_path / "configs.yaml"
    broken.write_text(text.replace(good, good[:-1], 1))  # the list is never closed
    line = text[:text.index(good)].count("\n") + 1
    return broken, line


def test_yaml_syntax_error_names_file_line_and_problem(tmp_path):
    broken, line = _broken_configs(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_presets(broken)
    message = str(info.value)
    assert message.startswith(f"{broken} line {line + 1}, column 5")
    assert "not valid YAML: expected ',' or ']'" in message and f"flow sequence that starts at line {line}" in message
    assert "DREAMER_RODENT_CONFIGS" in message
    with pytest.raises(ConfigError, match=r"config key 'env.keys' expects a list .*not a valid YAML list"):
        build_config([], {"env.keys": "[image, proprio"})


def test_broken_configs_yaml_on_the_command_line_is_one_error_line(tmp_path):
    broken, line = _broken_configs(tmp_path)
    for module, args in [("dreamer_rodent.train", ["--configs", "debug", "--logdir", str(tmp_path / "run")]),
                         ("dreamer_rodent.train", ["--help"])]:
        result = _run(module, args, DREAMER_RODENT_CONFIGS=str(broken))
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"error: {broken} line {line + 1}, column 5"), result.stderr
    assert not (tmp_path / "run").exists()
    missing = _run("dreamer_rodent.train", ["--help"], DREAMER_RODENT_CONFIGS=str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: the config file") and "does not exist" in missing.stderr


# ---- the rendering backend (MUJOCO_GL) -------------------------------------


def test_gl_backend_problems_name_the_backend_that_works():
    from dreamer_rodent.gl_backend import problem

    found = {"EGL": "libEGL.so.1", "OSMesa": "libOSMesa.so.8"}.get
    none = lambda name: None  # noqa: E731
    assert problem({}, found) is None  # egl, the default, with libEGL present
    assert problem({"MUJOCO_GL": "egl"}, found) is None
    assert problem({"MUJOCO_GL": "osmesa"}, found) is None
    assert problem({"MUJOCO_GL": "glfw", "DISPLAY": ":0"}, found) is None
    assert problem({"MUJOCO_GL": "off"}, none) is None  # rendering switched off on purpose
    headless = problem({"MUJOCO_GL": "glfw"}, found)
    assert "needs a display" in headless and "DISPLAY is not set" in headless and "MUJOCO_GL=egl" in headless
    assert "needs a display" in problem({"MUJOCO_GL": "1"}, found)  # dm_control's alias of glfw
    missing = problem({"MUJOCO_GL": "osmesa"}, none)
    assert "libOSMesa.so" in missing and "libosmesa6" in missing and "egl" in missing
    assert "libEGL.so" in problem({"MUJOCO_GL": "egl"}, none)
    assert "not a rendering backend" in problem({"MUJOCO_GL": "opengl"}, found)


@pytest.mark.parametrize("module,args", [("dreamer_rodent.train", ["--task", "ball_goto", "--configs", "debug"]),
                                         ("dreamer_rodent.eval", ["--checkpoint", "RUN"]),
                                         ("dreamer_rodent.tasks", [])])
def test_headless_glfw_is_one_error_line_from_every_command(module, args, tmp_path):
    environ = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run([sys.executable, "-m", module, *args, *(["--logdir", str(tmp_path / "run")]
                                                                   if module.endswith("train") else [])],
                          cwd=ROOT, env=dict(environ, MUJOCO_GL="glfw"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: MUJOCO_GL=glfw needs a display") and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_logdir_placeholders_are_filled_in_and_an_unknown_one_is_an_error():
    import datetime

    now = datetime.datetime(2026, 12, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    config = build_config(["debug"], {"task": "ball_goto", "logdir": "/tmp/runs/{task}_{timestamp}"})
    assert str(train.resolve_logdir(config, now)) == "/tmp/runs/ball_goto_20261202_030405"
    with pytest.raises(ConfigError, match=r"unknown placeholder \{date\}; use \{timestamp\}"):
        train.resolve_logdir(build_config(["debug"], {"logdir": "/tmp/{date}"}), now)

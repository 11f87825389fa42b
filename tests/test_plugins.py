"""Tasks from outside the tree: `--task_module` (a module path or a .py file) and the `dreamer_rodent.tasks`
entry-point group of pip-installed packages."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

from dreamer_rodent import train
from dreamer_rodent.config import parse_args
from dreamer_rodent.parallel import BatchEnv
from tasks import registry

ROOT = pathlib.Path(__file__).resolve().parent.parent
PLUGIN = textwrap.dedent('''
    from tasks import registry


    @registry.register("{name}", "A lab's copy of ball_goto, from outside tasks/.", walker="ball")
    def make(config, seed):
        return registry.get("ball_goto").factory(config, seed)
''')


def test_a_task_module_file_adds_its_task_for_training_and_the_env_workers(tmp_path):
    plugin = tmp_path / "lab_tasks.py"
    plugin.write_text(PLUGIN.format(name="lab_file_goto"))
    config, _ = parse_args(["--task", "lab_file_goto", "--task_module", str(plugin), "--configs", "debug",
                            "--run.envs", "1"])
    train.check_config(config)  # the task is known once its module is loaded
    assert registry.get("lab_file_goto").walker == "ball"
    envs = BatchEnv(config, parallel="process")  # a spawned worker imports the module again from the config
    try:
        obs = envs.step({"action": np.zeros((1, 3), np.float32), "reset": np.ones(1, bool)})
        assert obs["is_first"].all() and obs["proprio"].shape == (1, 7)
    finally:
        envs.close()


def test_a_task_module_that_fails_is_one_error_line(tmp_path, capsys):
    broken = tmp_path / "broken_tasks.py"
    broken.write_text("import numpy\nraise RuntimeError('lab code not ready')\n")
    rundir = tmp_path / "run"
    for module, expected in ((str(broken), "line 2: RuntimeError: lab code not ready"),
                             ("no_such_lab.tasks", "ModuleNotFoundError: No module named 'no_such_lab'")):
        assert train.main(["--task", "x", "--task_module", module, "--logdir", str(rundir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --task_module {module} failed to import: ") and expected in err, err
        assert "Traceback" not in err and not rundir.exists()


def test_an_installed_package_joins_the_registry_through_its_entry_point(tmp_path):
    site = tmp_path / "site"
    (site / "lab_pkg").mkdir(parents=True)
    (site / "lab_pkg" / "__init__.py").write_text("")
    (site / "lab_pkg" / "tasks.py").write_text(PLUGIN.format(name="lab_entry_goto"))
    (site / "lab_pkg" / "broken.py").write_text("raise ImportError('missing lab dependency')\n")
    dist = site / "lab_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab_pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dreamer_rodent.tasks]\nlab = lab_pkg.tasks\nbroken = lab_pkg.broken\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    done = subprocess.run([sys.executable, "-m", "dreamer_rodent.tasks"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "lab_entry_goto" in done.stdout and "A lab's copy of ball_goto" in done.stdout
    problems = done.stdout.split("task files with problems")[1]
    assert "broken.py: line 1: ImportError: missing lab dependency" in problems


SETTINGS_PLUGIN = textwrap.dedent('''
    from tasks import registry


    @registry.register("lab_step_goto", "ball_goto with a lab setting.", walker="ball",
                       settings={"step_height": (0.3, "height of the step to climb, metres"),
                                 "distance_scale": (0.1, "reward fall-off with distance")})
    def make(config, seed):
        assert config.task_kwargs.step_height > 0
        return registry.get("ball_goto").factory(config, seed)
''')


def test_a_task_declares_its_settings_and_only_those_are_accepted(tmp_path, capsys):
    from dreamer_rodent.config import ConfigError

    plugin = tmp_path / "step_tasks.py"
    plugin.write_text(SETTINGS_PLUGIN)
    base = ["--task", "lab_step_goto", "--task_module", str(plugin)]
    config, _ = parse_args(base)
    assert config.task_kwargs.step_height == 0.3 and config.task_kwargs.distance_scale == 0.1  # defaults filled in
    config, _ = parse_args([*base, "--task_kwargs.step_height", "0.5"])
    assert config.task_kwargs.step_height == 0.5
    try:
        parse_args([*base, "--task_kwargs.step_heigth", "0.5"])
    except ConfigError as error:
        message = str(error)
    assert "task 'lab_step_goto' has no setting 'step_heigth'" in message and "Did you mean 'step_height'?" in message
    assert "step_height (default 0.3): height of the step to climb, metres" in message
    assert train.main([*base, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Settings of task lab_step_goto (--task_kwargs.NAME VALUE; only these are accepted):" in out
    assert "step_height     default 0.3: height of the step to climb, metres" in out
    assert train.main(["--task", "ball_goto", "--help"]) == 0  # a built-in task: the shared task_kwargs only
    assert "Settings of task" not in capsys.readouterr().out


def test_a_plugin_task_with_its_own_setting_trains_and_evaluates_to_an_mp4(tmp_path):
    plugin = tmp_path / "step_tasks.py"
    plugin.write_text(SETTINGS_PLUGIN)
    rundir = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-m", "dreamer_rodent.train", "--task", "lab_step_goto", "--task_module",
                           str(plugin), "--task_kwargs.step_height", "0.5", "--configs", "debug", "--run.steps", "64",
                           "--run.envs", "1", "--run.progress", "false", "--logdir", str(rundir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    from dreamer_rodent.config import Config

    saved = Config.load(rundir / "config.yaml")
    assert saved.task_module == str(plugin) and saved.task_kwargs.step_height == 0.5
    video = tmp_path / "eval.mp4"
    done = subprocess.run([sys.executable, "-m", "dreamer_rodent.eval", "--checkpoint", str(rundir), "--episodes",
                           "1", "--size", "64x48", "--out", str(video)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert video.stat().st_size > 1000 and video.with_suffix(".json").exists()

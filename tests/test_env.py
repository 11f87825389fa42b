"""The env adapter: spaces, step/reset protocol, seeding, keys, cameras, errors."""

import numpy as np
import pytest

from dreamer_rodent.config import ConfigError, build_config
from dreamer_rodent.env import make_env
from tasks import registry

NO_IMAGE = ["vestibular", "proprio", "task"]


def _config(task="ball_goto", **flags):
    flags.setdefault("env.image_size", 16)
    return build_config(flags={"task": task, **flags})


def _check(obs, space):
    extra, missing = set(obs) - set(space), set(space) - set(obs)
    assert not extra and not missing, (extra, missing)
    for key, value in obs.items():
        if key.startswith("log/") and np.all(np.isnan(value)):
            continue  # a metric not defined yet (the go-to tasks' log/first_reach_s before the first reach)
        assert space[key].contains(value), (key, np.asarray(value).shape, np.asarray(value).dtype, space[key])
        if space[key].dtype == np.float32:
            assert np.all(np.isfinite(value)), key


@pytest.mark.parametrize("task", [n for n, e in registry.entries().items() if not e.benchmark])
def test_every_task_builds_and_steps_within_its_spaces(task):  # the suite benchmarks: tests/test_dmc.py
    env = make_env(_config(task))
    obs_space, act_space = env.obs_space, env.act_space
    for key in ("reward", "is_first", "is_last", "is_terminal", "image", "vestibular", "proprio"):
        assert key in obs_space, key
    assert obs_space["image"].shape == (16, 16, 3) and obs_space["image"].dtype == np.uint8
    assert obs_space["vestibular"].shape == (12,)
    assert act_space["action"].dtype == np.float32 and act_space["reset"].dtype == bool
    assert np.all(act_space["action"].low == -1) and np.all(act_space["action"].high == 1)
    task_keys = [k for k in obs_space if k not in ("reward", "is_first", "is_last", "is_terminal", "image",
                                                   "vestibular", "proprio") and not k.startswith("log/")]
    assert all(obs_space[k].dtype == np.float32 and len(obs_space[k].shape) == 1 for k in task_keys)
    assert all(obs_space[k].shape == () for k in obs_space if k.startswith("log/"))
    rng = np.random.default_rng(0)
    obs = env.step({"action": act_space["action"].sample(rng), "reset": True})
    _check(obs, obs_space)
    assert obs["is_first"] and obs["reward"] == 0
    for _ in range(3):
        obs = env.step({"action": act_space["action"].sample(rng), "reset": False})
        _check(obs, obs_space)
        assert not obs["is_first"]
    env.close()


def test_reset_protocol_and_time_limit():
    env = make_env(_config(**{"env.time_limit": 0.1, "env.keys": NO_IMAGE}))  # 5 control steps of 20 ms
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    first = env.step({"action": zero, "reset": False})  # the very first step starts an episode
    assert first["is_first"] and first["reward"] == 0 and not first["is_last"]
    flags = [env.step({"action": zero, "reset": False}) for _ in range(5)]
    assert [bool(o["is_last"]) for o in flags] == [False] * 4 + [True]
    assert not any(o["is_terminal"] for o in flags)  # a time limit is not terminal
    assert not any(o["is_first"] for o in flags)
    after = env.step({"action": zero, "reset": False})  # the step after is_last starts anew
    assert after["is_first"] and after["reward"] == 0 and not after["is_last"]
    env.step({"action": zero, "reset": False})
    forced = env.step({"action": zero, "reset": True})  # reset=True mid-episode
    assert forced["is_first"] and forced["reward"] == 0
    assert env.physics.data.time == 0.0
    env.close()


def _first_obs(config, index):
    env = make_env(config, index)
    obs = env.step({"reset": True})
    env.close()
    return obs


def test_same_seed_same_first_observations_and_indices_differ():
    config = _config("rodent_goto")
    a, b, c = _first_obs(config, 0), _first_obs(config, 0), _first_obs(config, 1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.allclose(a["target"], c["target"])
    other_seed = _first_obs(_config("rodent_goto", seed=1), 0)
    assert not np.allclose(a["target"], other_seed["target"])


def test_action_is_rescaled_to_the_walker_bounds_and_checked():
    env = make_env(_config(**{"env.keys": NO_IMAGE}))
    env.step({"reset": True})
    env.step({"action": np.array([1.0, -1.0, 1.0], np.float32), "reset": False})
    np.testing.assert_allclose(env.physics.data.ctrl, [1.0, -1.0, 0.6])  # neck ctrlrange is [-0.6, 0.6]
    env.step({"action": np.array([0.0, 0.0, -2.0], np.float32), "reset": False})  # clipped to -1
    np.testing.assert_allclose(env.physics.data.ctrl, [0.0, 0.0, -0.6])
    with pytest.raises(ValueError, match=r"shape \(2,\).*expects \(3,\)"):
        env.step({"action": np.zeros(2, np.float32), "reset": False})
    with pytest.raises(ValueError, match="NaN"):
        env.step({"action": np.array([np.nan, 0, 0], np.float32), "reset": False})
    env.close()


def test_action_repeat_steps_the_physics_repeatedly_and_sums_rewards():
    push = np.array([1.0, 0.3, 0.0], np.float32)
    single = make_env(_config(**{"env.keys": NO_IMAGE}))
    single.step({"reset": True})
    rewards = [single.step({"action": push, "reset": False})["reward"] for _ in range(6)]
    repeated = make_env(_config(**{"env.keys": NO_IMAGE, "env.action_repeat": 3}))
    assert repeated.dt == pytest.approx(3 * single.dt)
    repeated.step({"reset": True})
    summed = [repeated.step({"action": push, "reset": False})["reward"] for _ in range(2)]
    assert repeated.physics.data.time == pytest.approx(6 * 0.02)
    np.testing.assert_allclose(summed, [sum(rewards[:3]), sum(rewards[3:])], rtol=1e-5)
    single.close()
    repeated.close()


def test_egl_device_selection(monkeypatch):
    from dreamer_rodent.egl import apply_egl_device

    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.delenv("MUJOCO_EGL_DEVICE_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert apply_egl_device(_config(**{"env.egl_device": 2}), 0) == 2
    monkeypatch.setenv("MUJOCO_EGL_DEVICE_ID", "1")
    assert apply_egl_device(_config(), 5) == 1  # a user's choice wins over the worker index
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert apply_egl_device(_config(**{"env.egl_device": 2}), 0) is None  # only EGL has devices


def test_keys_without_image_render_nothing(monkeypatch):
    from dm_control.mujoco import engine

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although env.keys has no image")

    monkeypatch.setattr(engine.Physics, "render", no_render)
    env = make_env(_config("rodent_goto", **{"env.keys": NO_IMAGE}))
    assert "image" not in env.obs_space
    for reset in (True, False, False):
        obs = env.step({"action": np.zeros(38, np.float32), "reset": reset})
        assert "image" not in obs
    assert "vestibular" in obs and "proprio" in obs and "target" in obs
    env.close()


def test_keys_switch_groups_off():
    env = make_env(_config(**{"env.keys": ["image"]}))
    obs = env.step({"reset": True})
    assert set(k for k in obs if not k.startswith("log/")) == {"reward", "is_first", "is_last", "is_terminal", "image"}
    env.close()
    with pytest.raises(ValueError, match=r"unknown group\(s\) \['imgae'\]"):
        make_env(_config(**{"env.keys": ["imgae", "proprio"]}))


def test_cameras_by_name_and_render():
    env = make_env(_config("rodent_goto", **{"env.keys": NO_IMAGE}))
    env.step({"reset": True})
    names = env.camera_names()
    assert "walker/egocentric" in names and "walker/side" in names
    assert env.default_camera == "walker/side_alt"
    frame = env.render("side", 48, 32)
    assert frame.shape == (32, 48, 3) and frame.dtype == np.uint8 and frame.std() > 0
    assert env.render(None, 24, 16).shape == (16, 24, 3)
    with pytest.raises(ValueError, match="unknown camera 'sidee'; available cameras: .*walker/side"):
        env.render("sidee", 32, 32)
    env.close()


def test_tasks_cli_lists_the_registry_and_shows_the_agent_view(tmp_path, capsys):
    from PIL import Image

    from dreamer_rodent import tasks as cli

    assert cli.main([]) == 0
    listing = capsys.readouterr().out
    for name in registry.names():
        assert name in listing and registry.get(name).description in listing
    out = tmp_path / "frame.png"
    assert cli.main(["--show", "ball_goto", "--out", str(out), "--size", "16"]) == 0
    frame = np.asarray(Image.open(out))
    assert frame.shape == (384, 384 + 512, 3)  # upscaled ego image beside a 4:3 third-person view
    ego = frame[:, :384]
    assert len(np.unique(ego.reshape(-1, 3), axis=0)) <= 16 * 16  # nearest-neighbour upscale of 16x16


def test_clear_errors_for_unknown_task_camera_and_config_key():
    with pytest.raises(registry.UnknownTaskError, match="unknown task 'rodent_gotoo'.*Known tasks: .*ball_goto"):
        make_env(_config("rodent_gotoo"))
    with pytest.raises(ValueError, match="env.camera 'eye' is not a camera.*available: .*egocentric"):
        make_env(_config(**{"env.camera": "eye"}))
    with pytest.raises(ConfigError, match="unknown config key 'env.image_sise'.*env.image_size"):
        build_config(flags={"env.image_sise": 16})
    with pytest.raises(ConfigError, match="task_kwargs.success_radius"):
        build_config(flags={"task_kwargs.succes_radius": 0.1})


def test_image_is_the_current_egocentric_view():
    from tasks import base

    env = make_env(_config(**{"env.image_size": 24}))
    obs = env.step({"reset": True})
    images = [obs["image"]]
    for _ in range(10):
        obs = env.step({"action": np.array([1.0, 0.5, 0.0], np.float32), "reset": False})
        images.append(obs["image"])
    direct = env.physics.render(24, 24, camera_id="walker/egocentric", scene_option=base.ego_scene_option(),
                                render_flag_overrides=dict(base.CHEAP_RENDER_FLAGS))
    np.testing.assert_array_equal(obs["image"], direct)
    assert not np.array_equal(images[0], images[-1])  # the view follows the moving ball
    env.close()


def test_reseed_draws_new_episodes_and_is_deterministic():
    """A resumed run reseeds its envs so that it does not replay the run's first episodes."""
    config = _config(**{"env.keys": NO_IMAGE})
    zero = {"action": np.zeros(make_env(config).act_space["action"].shape, np.float32), "reset": True}

    def targets(reseed=None, episodes=3):
        env = make_env(config, 0)
        if reseed is not None:
            env.reseed(reseed)
        out = [env.step(dict(zero))["target"] for _ in range(episodes)]
        env.close()
        return np.stack(out)

    base, again = targets(), targets()
    np.testing.assert_array_equal(base, again)
    new, new_again = targets(reseed=12345), targets(reseed=12345)
    np.testing.assert_array_equal(new, new_again)
    assert not np.allclose(base, new)


# ---------------------------------------------------------------------------
# Task plugins that fail: the registry is discovered again with an extra directory on the tasks package's path
# (the real tasks/ is never written to).

PLUGINS = {
    "broken_plugin.py": (
        "from tasks.registry import register\n"
        "import no_such_module_for_this_test\n"
        "\n"
        "@register('broken_task', 'never loads', walker='ball')\n"
        "def broken_task(config, seed):\n"
        "    raise AssertionError\n"
    ),
    "bad_syntax_plugin.py": "def oops(:\n",
    "zz_copy_plugin.py": (  # a copy of a task file that kept one of its names
        "from tasks.registry import register\n"
        "\n"
        "@register('mouse_goto', 'a copy that forgot to rename', walker='mouse')\n"
        "def mouse_goto(config, seed):\n"
        "    raise AssertionError\n"
        "\n"
        "@register('zz_fine_plugin_task', 'a good plugin task', walker='ball')\n"
        "def zz_fine(config, seed):\n"
        "    raise AssertionError\n"
    ),
}


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    import sys

    import tasks

    registry.entries()  # the real modules are imported (and registered) once, outside the patched state
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, text in PLUGINS.items():
        (folder / name).write_text(text)
    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(folder)])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_DUPLICATES", {}, raising=False)
    monkeypatch.setattr(registry, "_FAILED", {}, raising=False)
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    yield folder
    for name in PLUGINS:
        sys.modules.pop(f"tasks.{name[:-3]}", None)


def test_broken_task_files_are_listed_one_line_each_and_the_rest_still_load(plugins, capsys):
    from dreamer_rodent import tasks as cli

    assert cli.main([]) == 0
    listing = capsys.readouterr().out
    for name in ("ball_goto", "rodent_goto", "dmc_cartpole_swingup", "zz_fine_plugin_task"):
        assert name in listing, name
    problems = listing.split("task files with problems")[1].strip().splitlines()[1:]
    assert len(problems) == 3, problems
    assert (f"{plugins / 'broken_plugin.py'}: line 2: ModuleNotFoundError: No module named "
            "'no_such_module_for_this_test'") in problems[1]
    assert f"{plugins / 'bad_syntax_plugin.py'}: line 1: SyntaxError" in problems[0]
    assert f"{plugins / 'zz_copy_plugin.py'}: task 'mouse_goto' is also registered by tasks.goto (" in problems[2]
    assert "goto.py" in problems[2] and "rename one" in problems[2]
    assert "mouse_goto " not in listing.split("task files with problems")[0]  # ambiguous: not offered as a task
    assert registry.get("ball_goto").walker == "ball"
    assert make_env(_config("ball_goto", **{"env.keys": NO_IMAGE})).step({"reset": True})["is_first"]


def test_a_broken_or_duplicate_task_is_named_with_its_file(plugins):
    with pytest.raises(registry.UnknownTaskError) as info:
        registry.get("broken_task")
    assert str(info.value).startswith(f"task 'broken_task' is defined in {plugins / 'broken_plugin.py'}, which "
                                      "failed to import: line 2: ModuleNotFoundError")
    with pytest.raises(registry.DuplicateTaskError) as info:
        registry.get("mouse_goto")
    message = str(info.value)
    assert "task 'mouse_goto' is registered twice: by tasks.goto (" in message
    assert f"and by tasks.zz_copy_plugin ({plugins / 'zz_copy_plugin.py'})" in message
    assert "rename the task in one of these files" in message
    # A name no file registers: the files that failed to import are named, as its task may be in one.
    with pytest.raises(registry.UnknownTaskError, match=r"unknown task 'no_such_task'.*failed to import.*"
                                                         r"bad_syntax_plugin.py: line 1: SyntaxError.*broken_plugin.py"):
        registry.get("no_such_task")


def test_training_a_broken_task_is_one_error_line_and_a_good_one_still_trains(plugins, tmp_path, capsys):
    from dreamer_rodent import train

    base = ["--configs", "debug", "--run.envs", "1", "--run.env_parallel", "none", "--run.progress", "false",
            "--logging.tensorboard", "false", "--env.time_limit", "0.5"]
    bad = tmp_path / "bad"
    assert train.main(["--task", "broken_task", *base, "--logdir", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: task 'broken_task' is defined in ") and "broken_plugin.py" in err
    assert "Traceback" not in err and not bad.exists()
    assert train.main(["--task", "mouse_goto", *base, "--logdir", str(bad)]) == 2
    assert "registered twice" in capsys.readouterr().err and not bad.exists()
    good = tmp_path / "good"
    assert train.main(["--task", "ball_goto", *base, "--logdir", str(good), "--run.steps", "10",
                       "--run.prefill", "10"]) == 0
    captured = capsys.readouterr()
    assert "Finished 10 env steps" in captured.out
    assert "warning: task file " in captured.err and "broken_plugin.py: line 2" in captured.err
    assert "error: " not in captured.err

"""dm_control suite benchmark tasks: registration, spaces, episodes, seeding, listing, a tiny training run."""

import json

import numpy as np
import pytest

from dreamer_rodent.config import Config, build_config, parse_args
from dreamer_rodent.env import make_env
from tasks import registry
from tasks.base import TaskConfigError

SUITE = [n for n, e in registry.entries().items() if e.benchmark]
BASIC = {"reward", "is_first", "is_last", "is_terminal"}


def _config(task, *presets, **flags):
    return build_config(["dmc_proprio", *presets], {"task": task, **flags})


def test_the_dmc_proprio_tasks_are_registered_with_their_preset():
    for name in ["dmc_cartpole_swingup", "dmc_cartpole_balance", "dmc_reacher_easy", "dmc_reacher_hard",
                 "dmc_walker_walk", "dmc_walker_run", "dmc_cheetah_run", "dmc_finger_spin", "dmc_hopper_stand",
                 "dmc_pendulum_swingup", "dmc_ball_in_cup_catch", "dmc_quadruped_walk"]:
        assert name in SUITE, name
        assert registry.get(name).preset == "dmc_proprio"
    assert all(n.startswith("dmc_") for n in SUITE)


@pytest.mark.parametrize("task", SUITE)
def test_every_suite_task_builds_and_steps_within_its_spaces(task):
    config = _config(task)
    env = make_env(config)
    try:
        assert set(env.obs_space) == BASIC | {"proprio"}  # no vestibular, no task keys, no image unless asked
        proprio = env.obs_space["proprio"]
        assert proprio.dtype == np.float32 and len(proprio.shape) == 1
        spec = env._env.observation_spec()
        assert proprio.shape[0] == sum(int(np.prod(s.shape)) for s in spec.values())
        assert env.act_space["action"].dtype == np.float32
        assert env.dt * 1000 <= config.env.time_limit  # the preset's cap leaves the suite's 1000 steps whole
        rng = np.random.default_rng(0)
        obs = env.step({"reset": True})
        assert obs["is_first"] and obs["proprio"].dtype == np.float32
        for _ in range(5):
            obs = env.step({"action": env.act_space["action"].sample(rng), "reset": False})
            assert not obs["is_first"] and not obs["is_last"]
            assert 0.0 <= obs["reward"] <= 1.0
            assert env.obs_space["proprio"].contains(obs["proprio"]) and np.all(np.isfinite(obs["proprio"]))
    finally:
        env.close()


def test_proprio_is_the_suite_observation_in_its_order():
    env = make_env(_config("dmc_cartpole_swingup"))
    obs = env.step({"reset": True})
    suite_obs = env._env._env.task.get_observation(env.physics)
    assert list(suite_obs) == ["position", "velocity"]
    np.testing.assert_allclose(obs["proprio"], np.concatenate([suite_obs["position"], suite_obs["velocity"]]),
                               rtol=1e-6)
    env.close()


@pytest.mark.parametrize("task, camera", [("dmc_cartpole_swingup", 0), ("dmc_quadruped_walk", 2)])
def test_image_is_the_suite_camera_at_the_image_size(task, camera):
    env = make_env(_config(task, **{"env.keys": ["image", "proprio"], "env.image_size": 16}))
    assert env.obs_space["image"].shape == (16, 16, 3) and env.obs_space["image"].dtype == np.uint8
    obs = env.step({"reset": True})
    obs = env.step({"action": np.zeros(env.act_space["action"].shape, np.float32), "reset": False})
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (16, 16, 3)
    np.testing.assert_array_equal(obs["image"], env.physics.render(16, 16, camera_id=camera))
    env.close()


def test_images_above_the_suites_640x480_framebuffer_render_up_to_the_common_limit():
    env = make_env(_config("dmc_cartpole_swingup", **{"env.keys": ["image", "proprio"], "env.image_size": 800}))
    obs = env.step({"reset": True})
    assert obs["image"].shape == (800, 800, 3) and obs["image"].std() > 0
    assert env.render(None, 1024, 768).shape == (768, 1024, 3)  # eval videos get the same room
    env.close()
    with pytest.raises(TaskConfigError, match="larger than the offscreen framebuffer"):
        make_env(_config("dmc_cartpole_swingup", **{"env.keys": ["image", "proprio"], "env.image_size": 1040}))


def test_a_suite_episode_is_1000_steps_and_ends_by_time_limit_not_terminal():
    env = make_env(_config("dmc_cartpole_swingup"))
    assert env.dt == pytest.approx(0.01)
    rng = np.random.default_rng(1)
    obs = env.step({"reset": True})
    flags, total = [], 0.0
    while not obs["is_last"]:
        obs = env.step({"action": env.act_space["action"].sample(rng), "reset": False})
        flags.append((bool(obs["is_last"]), bool(obs["is_terminal"])))
        total += float(obs["reward"])
    assert len(flags) == 1000 and flags[-1] == (True, False)
    assert not any(last for last, _ in flags[:-1])
    assert 0.0 <= total <= 1000.0
    assert env.step({"action": np.zeros(1, np.float32), "reset": False})["is_first"]
    env.close()


def test_a_shorter_time_limit_caps_the_episode():
    env = make_env(_config("dmc_walker_walk", **{"env.time_limit": 0.1}))  # 4 control steps of 25 ms
    env.step({"reset": True})
    flags = [env.step({"action": np.zeros(6, np.float32), "reset": False}) for _ in range(4)]
    assert [bool(o["is_last"]) for o in flags] == [False, False, False, True]
    assert not flags[-1]["is_terminal"]
    env.close()


def test_a_diverged_simulation_ends_the_episode_as_terminal_instead_of_raising(capsys):
    env = make_env(_config("dmc_cartpole_swingup"))
    zero = np.zeros(1, np.float32)
    env.step({"reset": True})
    before = env.step({"action": zero, "reset": False})
    env.physics.data.qvel[:] = 1e30
    obs = env.step({"action": zero, "reset": False})
    assert obs["is_last"] and obs["is_terminal"] and obs["reward"] == 0
    np.testing.assert_array_equal(obs["proprio"], before["proprio"])  # the last valid observation
    assert "the episode ends as terminal" in capsys.readouterr().out
    after = env.step({"action": zero, "reset": False})
    assert after["is_first"] and np.all(np.isfinite(after["proprio"]))
    env.close()


def test_same_seed_same_episode_and_reseed_draws_anew():
    a, b, c, d = (make_env(_config("dmc_reacher_easy"), i) for i in (0, 0, 1, 0))
    d.reseed(12345)  # as a resumed run does with a freshly built env
    first = [e.step({"reset": True})["proprio"] for e in (a, b, c, d)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.allclose(first[0], first[2]) and not np.allclose(first[0], first[3])
    a.reseed(12345)  # mid-episode: the next episode comes from the new seed
    a.step({"reset": True})
    np.testing.assert_array_equal(a.step({"reset": True})["proprio"], d.step({"reset": True})["proprio"])
    assert a.curriculum_state() == {}
    a.load_curriculum_state({})
    for env in (a, b, c, d):
        env.close()


def test_keys_the_suite_lacks_are_an_error_naming_the_fix():
    from tasks.registry import TaskConfigError

    with pytest.raises(TaskConfigError, match=r"not \['vestibular', 'task'\].*--env.keys proprio"):
        make_env(_config("dmc_cartpole_swingup", **{"env.keys": ["vestibular", "proprio", "task"]}))


def test_task_flag_applies_dmc_proprio_under_later_presets_and_flags():
    config, _ = parse_args(["--task", "dmc_cartpole_swingup", "--configs", "size1m"])
    assert config.task == "dmc_cartpole_swingup" and config.env.keys == ("proprio",)
    assert config.env.action_repeat == 1 and config.run.train_ratio == 1024
    assert config.agent.rssm.deter == 512  # size1m, stacked after the task's preset
    config, _ = parse_args(["--task", "dmc_walker_run", "--env.keys", "image,proprio", "--run.train_ratio", "512"])
    assert config.env.keys == ("image", "proprio") and config.run.train_ratio == 512


def test_a_registered_preset_missing_from_configs_yaml_is_an_error(tmp_path):
    from dreamer_rodent.config import CONFIGS_PATH, ConfigError, load_presets, task_preset, yaml_dump

    presets = load_presets()
    del presets["dmc_proprio"]
    path = tmp_path / "configs.yaml"
    path.write_text(yaml_dump(presets))
    assert task_preset("dmc_cartpole_swingup", [], CONFIGS_PATH) == ["dmc_proprio"]
    with pytest.raises(ConfigError, match=r"registered with the config preset 'dmc_proprio', which .* does not have"):
        task_preset("dmc_cartpole_swingup", [], path)


def test_listing_shows_the_suite_tasks_as_benchmarks(capsys):
    from dreamer_rodent import tasks as cli

    assert cli.main([]) == 0
    listing = capsys.readouterr().out
    head, _, benchmarks = listing.partition("benchmark tasks")
    assert benchmarks, listing
    for name in SUITE:
        assert name in benchmarks and name not in head
    assert "rodent_goto" in head and "rodent_goto" not in benchmarks


def test_tiny_training_run_on_cartpole(tmp_path):
    """The whole path: preset, env workers in process, agent, replay, checkpoint; 1 s episodes finish."""
    from dreamer_rodent.train import main

    rundir = tmp_path / "run"
    assert main(["--task", "dmc_cartpole_swingup", "--configs", "debug", "--env.time_limit", "1",
                 "--run.steps", "300", "--run.env_parallel", "none", "--run.progress", "false",
                 "--logdir", str(rundir)]) == 0
    config = Config.load(rundir / "config.yaml")
    assert config.task == "dmc_cartpole_swingup" and list(config.env.keys) == ["proprio"]
    lines = [json.loads(line) for line in (rundir / "metrics.jsonl").read_text().splitlines()]
    scores = [line["episode/score"] for line in lines if "episode/score" in line]
    lengths = [line["episode/length"] for line in lines if "episode/length" in line]
    assert scores and all(0.0 <= s <= 100.0 for s in scores) and set(lengths) == {100}
    assert (rundir / "checkpoints" / "latest").read_text().strip() == "ckpt_000000300"

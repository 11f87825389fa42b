"""dreamer_rodent.gym: every task as a gymnasium env, over the same adapter training uses."""

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")  # the [gym] extra; the [test] extra installs it

from gymnasium.utils.env_checker import check_env  # noqa: E402

import dreamer_rodent.gym as rodent_gym  # noqa: E402
from dreamer_rodent.config import ConfigError, build_config  # noqa: E402
from dreamer_rodent.env import make_env  # noqa: E402
from tasks import registry  # noqa: E402

TASKS = sorted(registry.entries())


@pytest.mark.filterwarnings("ignore:.*Box observation space (minimum|maximum) value is")
@pytest.mark.parametrize("task", TASKS)
def test_every_task_is_registered_and_passes_gymnasiums_env_checker(task):
    assert rodent_gym.env_id(task) in gymnasium.registry
    env = gymnasium.make(rodent_gym.env_id(task), config={"env.keys": ["proprio"]})
    check_env(env.unwrapped, skip_render_check=True)  # reset seeding, step determinism, spaces, API
    env.close()


def test_the_gym_env_is_the_training_adapter_step_for_step():
    env = gymnasium.make("dreamer_rodent/ball_goto-v0", distance_scale=0.1)
    unwrapped = env.unwrapped
    assert unwrapped.config.task_kwargs.distance_scale == 0.1  # keyword arguments are the task's settings
    assert unwrapped.config.env.time_limit == 5.0  # the task's own preset applied first, as `--task ball_goto`
    assert set(env.observation_space.spaces) == {"image", "vestibular", "proprio", "target"}
    assert env.observation_space["image"].dtype == np.uint8 and env.action_space.shape == (3,)
    reference = make_env(unwrapped.config)  # the same config and seed through the adapter directly
    reference.reseed(5)
    expected = reference.step({"reset": True})
    observation, info = env.reset(seed=5)
    for key in observation:
        np.testing.assert_array_equal(observation[key], expected[key])
    rng = np.random.default_rng(0)
    steps, ended = 0, None
    while ended is None:
        action = rng.uniform(-1, 1, 3).astype(np.float32)
        observation, reward, terminated, truncated, info = env.step(action)
        expected = reference.step({"action": action, "reset": False})
        steps += 1
        np.testing.assert_array_equal(observation["proprio"], expected["proprio"])
        assert reward == pytest.approx(float(expected["reward"]))
        assert info["log/distance"] == pytest.approx(float(expected["log/distance"]))
        assert not terminated  # the ball never falls: only the time limit ends it
        if truncated:
            ended = steps
    assert ended == round(5.0 / reference.dt)  # truncated exactly at the time limit, as is_last in training
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(np.zeros(3, np.float32))
    env.close()
    reference.close()


def test_a_terminal_episode_is_terminated_not_truncated():
    env = gymnasium.make("dreamer_rodent/dmc_cartpole_swingup-v0").unwrapped
    env.reset(seed=0)
    env.step(np.zeros(1, np.float32))
    env._env.physics.data.qvel[:] = 1e30  # a diverged simulation ends the episode as terminal
    _, _, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
    assert terminated and not truncated
    env.close()


def test_unknown_settings_are_the_training_error():
    with pytest.raises(ConfigError, match="unknown config key 'task_kwargs.distnce_scale'"):
        gymnasium.make("dreamer_rodent/ball_goto-v0", distnce_scale=0.1)
    assert build_config([], {"task": "ball_goto"})  # the registry itself is untouched


@pytest.mark.filterwarnings("ignore:.*Box observation space (minimum|maximum) value is")
def test_rgb_array_render_and_record_video(tmp_path):
    pytest.importorskip("moviepy")
    env = gymnasium.make("dreamer_rodent/ball_goto-v0", render_mode="rgb_array", render_size=(96, 64))
    check_env(env.unwrapped)  # with the render check this time
    env = gymnasium.wrappers.RecordVideo(env, str(tmp_path / "videos"), episode_trigger=lambda episode: True,
                                         disable_logger=True)
    env.reset(seed=1)
    frame = env.render()
    assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8 and frame.std() > 0
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        done = terminated or truncated
    env.close()
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    import imageio.v2 as imageio

    frames = [f.astype(int) for f in imageio.mimread(str(videos[0]))]
    # Each frame is its own copy (the MuJoCo camera reuses one buffer): the ball moves, so the video changes.
    assert len(frames) > 10 and np.abs(frames[0] - frames[-1]).mean() > 0.5

"""Go-to-target: success bonus, posture penalty, no contact resets, curriculum."""

import numpy as np
import pytest

from dreamer_rodent.config import build_config
from dreamer_rodent.env import make_env
from tasks import base

NO_IMAGE = ["vestibular", "proprio", "task"]


def _env(task, **flags):
    flags.setdefault("env.keys", NO_IMAGE)
    flags.setdefault("env.image_size", 16)
    return make_env(build_config(flags={"task": task, **flags}))


def _task(env):
    return env._env.task


def _potential(distance, scale=0.5):
    return 1.0 - np.tanh(distance / scale)


def test_head_at_target_earns_the_success_bonus_and_respawns_it():
    env = _env("rodent_goto")
    env.step({"reset": True})
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    # Far away: no bonus.
    far = env.step({"action": zero, "reset": False})
    assert far["log/success"] == 0 and far["reward"] < 1.0
    head = env.physics.bind(env.walker.head).xpos
    _task(env).set_target(env.physics, head[:2])
    obs = env.step({"action": zero, "reset": False})
    assert obs["log/success"] == 1.0
    assert obs["reward"] > 9.5  # success_bonus (the head drifted a little: a small progress term)
    assert obs["log/targets_reached"] == 1.0
    # The target moved on, and the episode goes on (success is not terminal).
    assert obs["log/distance"] > 0.05
    assert not obs["is_last"] and not obs["is_terminal"]
    env.close()


def test_success_step_is_scored_against_the_target_reached_not_its_respawn():
    env = _env("rodent_goto")
    env.step({"reset": True})
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    env.step({"action": zero, "reset": False})
    reached = np.array(env.physics.bind(env.walker.head).xpos[:2])
    _task(env).set_target(env.physics, reached)
    obs = env.step({"action": zero, "reset": False})
    assert obs["log/success"] == 1.0
    head = env.physics.bind(env.walker.head).xpos[:2]
    scored = float(np.hypot(*(head - reached)))  # distance to the target it reached, ~0
    assert obs["log/distance"] > 0.05  # while the observation shows the respawned one
    penalty = 1.0 * (1.0 - obs["log/upright"]) / 2.0
    # Progress counts from where the target was put (distance 0, potential 1) to `scored`.
    expected = 10.0 + 10.0 * (_potential(scored) - 1.0) - penalty
    np.testing.assert_allclose(obs["reward"], expected, atol=1e-4)
    env.close()


def test_progress_reward_is_a_difference_of_potentials_and_hovering_earns_nothing():
    env = _env("ball_goto", **{"task_kwargs.level": 0})
    env.step({"reset": True})
    scale = _task(env).distance_scale  # the ball preset's 0.1
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    head = np.array(env.physics.bind(env.walker.head).xpos[:2])
    target = head + [0.06, 0.0]  # straight ahead (the ball spawns facing +x), just outside the 0.05 m radius
    _task(env).set_target(env.physics, target)
    for _ in range(5):  # holding still next to the target
        obs = env.step({"action": zero, "reset": False})
        assert abs(obs["reward"]) < 1e-3 and obs["log/success"] == 0
    before = obs["log/distance"]
    roll = np.zeros_like(zero)
    roll[0] = 1.0  # roll forward, towards the target straight ahead
    total = 0.0
    for _ in range(10):
        obs = env.step({"action": roll, "reset": False})
        total += obs["reward"]
        if obs["log/success"]:
            break
    assert obs["log/success"] == 1.0
    scored = float(np.hypot(*(env.physics.bind(env.walker.head).xpos[:2] - target)))
    # Ten times the potential gained up to the success step, plus the bonus of 10 (the ball cannot tip).
    expected = 10.0 * (_potential(scored, scale) - _potential(before, scale)) + 10.0
    np.testing.assert_allclose(total, expected, atol=1e-3)
    env.close()


def test_rodent_on_its_back_earns_the_posture_penalty():
    env = _env("rodent_goto")
    env.step({"reset": True})
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    upright = env.step({"action": zero, "reset": False})
    assert upright["log/upright"] > 0.9
    assert abs(upright["reward"]) < 0.05  # standing still: no progress, penalty ~0 when upright
    # Flip the rat onto its back (180 degrees about its long axis), above the floor.
    walker, physics = env.walker, env.physics
    walker.set_pose(physics, position=[0.0, 0.0, 0.12], quaternion=[0.0, 1.0, 0.0, 0.0])
    walker.set_velocity(physics, velocity=np.zeros(3), angular_velocity=np.zeros(3))
    flipped = env.step({"action": zero, "reset": False})
    assert flipped["log/upright"] < -0.8
    penalty = 1.0 * (1.0 - flipped["log/upright"]) / 2.0
    progress = 10.0 * (_potential(flipped["log/distance"]) - _potential(upright["log/distance"]))
    np.testing.assert_allclose(flipped["reward"], progress - penalty, atol=1e-4)
    assert flipped["reward"] < upright["reward"] - 0.8
    # The vestibular world z-axis says "upside down" too.
    assert flipped["vestibular"][11] < -0.8
    env.close()


def test_body_contacts_do_not_end_the_episode():
    env = _env("rodent_goto", **{"env.time_limit": 2.0})
    env.step({"reset": True})
    rng = np.random.default_rng(0)
    lasts = []
    for _ in range(100):
        obs = env.step({"action": rng.uniform(-1, 1, env.act_space["action"].shape).astype(np.float32),
                        "reset": False})
        lasts.append(bool(obs["is_last"]))
    assert lasts == [False] * 99 + [True]  # only the 2 s time limit ends it
    assert not obs["is_terminal"]
    env.close()


def test_target_observation_is_egocentric_in_success_radii():
    env = _env("ball_goto")
    radius = _task(env).success_radius
    env.step({"reset": True})
    physics, walker = env.physics, env.walker
    for yaw in (0.0, 1.0, -2.5):
        walker.set_pose(physics, quaternion=[np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)])
        physics.forward()
        head = physics.bind(walker.head).xpos
        _task(env).set_target(physics, head[:2] + 0.4 * np.array([np.cos(yaw), np.sin(yaw)]))
        target = _task(env).target_observable(physics)
        np.testing.assert_allclose(target[:2] * radius, [0.4, 0.0], atol=1e-6)
        assert np.linalg.norm(target[:2]) > 1.0  # 0.4 m is far outside the success radius
    env.close()


def test_curriculum_unit():
    cur = base.Curriculum([0.1, 0.2, 0.4], threshold=0.5, window=2)
    assert cur.level == 0 and cur.value == 0.1
    cur.record(False)
    cur.record(False)
    assert cur.level == 0  # 0% success
    cur.record(True)
    assert cur.level == 1  # window [False, True]: 50% >= threshold
    cur.record(True)
    assert cur.level == 1  # window restarted at the new level: 1 episode only
    cur.record(True)
    assert cur.level == 2
    for _ in range(5):
        cur.record(True)
    assert cur.level == 2  # top level
    restored = base.Curriculum([0.1, 0.2, 0.4], threshold=0.5, window=2)
    restored.load_state_dict(cur.state_dict())
    assert restored.level == 2 and restored.state_dict() == cur.state_dict()
    pinned = base.Curriculum([0.1, 0.2, 0.4], threshold=0.5, window=2, pinned=1)
    for _ in range(5):
        pinned.record(True)
    assert pinned.level == 1
    with pytest.raises(ValueError, match="level 3 is out of range"):
        base.Curriculum([0.1, 0.2, 0.4], threshold=0.5, window=2, pinned=3)
    with pytest.raises(ValueError, match="does not fit the 3 configured levels"):
        restored.load_state_dict({"level": 7})


def test_curriculum_advances_in_the_env_and_survives_save_restore():
    flags = {"env.time_limit": 0.1, "task_kwargs.curriculum_window": 2, "task_kwargs.curriculum_threshold": 0.5}
    env = _env("ball_goto", **flags)
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    obs = env.step({"reset": True})
    assert obs["log/curriculum_level"] == 0
    levels = []
    for _ in range(2):  # two successful episodes: the target is put at the head
        head = env.physics.bind(env.walker.head).xpos
        _task(env).set_target(env.physics, head[:2])
        obs = env.step({"action": zero, "reset": False})
        assert obs["log/success"] == 1
        while not obs["is_last"]:
            obs = env.step({"action": zero, "reset": False})
        obs = env.step({"action": zero, "reset": False})  # the next episode's first step
        levels.append(obs["log/curriculum_level"])
    assert levels == [0, 1]
    # Targets of the new level are drawn up to its distance.
    assert obs["log/curriculum_distance"] == pytest.approx(0.3)
    state = env.curriculum_state()
    env.close()

    fresh = _env("ball_goto", **flags)
    assert fresh.step({"reset": True})["log/curriculum_level"] == 0
    fresh.load_curriculum_state(state)
    assert fresh.step({"reset": True})["log/curriculum_level"] == 1
    # Restored before the first step (a resumed run): the first episode is drawn at the restored level.
    resumed = _env("ball_goto", **{**flags, "task_kwargs.curriculum_levels": [0.1, 5.0]})
    resumed.load_curriculum_state({"level": 1, "recent": []})
    obs = resumed.step({"action": zero, "reset": False})
    assert obs["is_first"] and obs["log/curriculum_level"] == 1
    assert obs["log/distance"] > 0.1  # level 0 would put the target within 0.1 m
    resumed.close()
    assert fresh.curriculum_state()["level"] == 1
    fresh.close()


def test_pinned_level_sets_the_target_distance():
    env = _env("ball_goto", **{"task_kwargs.level": 4})
    for _ in range(3):
        obs = env.step({"reset": True})
        assert obs["log/curriculum_level"] == 4
        assert 0.075 <= obs["log/distance"] <= 1.2 + 1e-6
    env.close()

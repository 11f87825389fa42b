"""Maze forage and the classic rodent tasks: spaces, rewards on touch, terminations.

Reward tests drive the TaskBuild's composer environment directly and put the
walker (or the orb) where the test needs it, so they need no trained policy.
"""

import dreamer_rodent  # noqa: F401  (sets MUJOCO_GL before dm_control is imported)
import numpy as np
import pytest
from dm_control import mjcf

from dreamer_rodent.config import build_config
from dreamer_rodent.env import make_env
from tasks import registry

NO_IMAGE = ["vestibular", "proprio", "task"]
TASK_KEYS = {
    "rodent_maze_forage": {},
    "mouse_maze_forage": {},
    "rodent_escape_bowl": {"origin": (3,)},
    "rodent_run_gaps": {},
    "rodent_two_touch": {"task_state": (5,), "target": (3,)},
}
LOG_KEYS = {
    "rodent_maze_forage": {"targets_collected", "targets_fraction", "targets_total"},
    "mouse_maze_forage": {"targets_collected", "targets_fraction", "targets_total"},
    "rodent_escape_bowl": {"head_distance", "escaped", "upright"},
    "rodent_run_gaps": {"distance", "forward_velocity", "fell"},
    "rodent_two_touch": {"trials", "successes", "paw_distance", "state"},
}


def _config(task, **flags):
    flags.setdefault("env.image_size", 8)
    return build_config(flags={"task": task, **flags})


def _build(task, keys=NO_IMAGE, seed=0):
    build = registry.get(task).factory(_config(task, **{"env.keys": keys}), seed)
    build.env.reset()
    return build


def _zero(build):
    return np.zeros(build.env.action_spec().shape)


@pytest.mark.parametrize("task", sorted(TASK_KEYS))
def test_task_builds_and_steps_within_its_spaces(task):
    env = make_env(_config(task))
    space = env.obs_space
    expected = {"reward", "is_first", "is_last", "is_terminal", "image", "vestibular", "proprio"}
    expected |= set(TASK_KEYS[task]) | {f"log/{k}" for k in LOG_KEYS[task]}
    assert set(space) == expected
    assert space["image"].shape == (8, 8, 3)
    for key, shape in TASK_KEYS[task].items():
        assert space[key].shape == shape and space[key].dtype == np.float32
    rng = np.random.default_rng(0)
    for reset in (True, False, False, False):
        obs = env.step({"action": env.act_space["action"].sample(rng), "reset": reset})
        assert set(obs) == set(space)
        for key, value in obs.items():
            assert space[key].contains(value), (key, np.asarray(value).shape, np.asarray(value).dtype)
    assert obs["image"].std() > 0  # the camera sees the arena
    env.close()


@pytest.mark.parametrize("task", ["rodent_maze_forage", "mouse_maze_forage"])
def test_maze_target_gives_reward_once_when_the_walker_touches_it(task):
    build = _build(task)
    env, physics, walker = build.env, build.env.physics, build.walker
    assert not walker.observables.egocentric_camera.enabled  # the stock camera ManyGoalsMaze turns on
    scale = 0.45 if task.startswith("mouse") else 1.0  # the mouse's maze is the rat's scaled to its size
    assert physics.bind(env.task.targets[0].geom).size[0] == pytest.approx(0.05 * scale)
    assert env.step(_zero(build)).reward == 0.0
    target = env.task.targets[0]
    freejoint = mjcf.get_frame_freejoint(walker.mjcf_model)
    with physics.reset_context():
        physics.bind(freejoint).qpos[:3] = physics.bind(target.geom).xpos  # torso onto the target
    timestep = env.step(_zero(build))
    assert timestep.reward == 50.0
    assert target.activated and build.log_metrics(physics)["targets_collected"] == 1.0
    assert env.step(_zero(build)).reward == 0.0  # collected targets pay once


def test_maze_steps_never_scan_contacts_in_python(monkeypatch):
    """The stock targets scan every contact in Python at each of 20 substeps."""
    from dm_control.locomotion.props import target_sphere

    build = _build("rodent_maze_forage")

    def scan(*args, **kwargs):
        raise AssertionError("a target ran the stock per-substep contact scan")

    monkeypatch.setattr(target_sphere.TargetSphere, "_update_activation", scan)
    for _ in range(3):
        build.env.step(_zero(build))


def test_maze_without_image_key_renders_nothing(monkeypatch):
    """ManyGoalsMaze switches the stock camera on; without `image` nothing may render."""
    from dm_control.mujoco import engine

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although env.keys has no image")

    monkeypatch.setattr(engine.Physics, "render", no_render)
    env = make_env(_config("rodent_maze_forage", **{"env.keys": NO_IMAGE}))
    for reset in (True, False, True, False):  # a reset builds a new maze and recompiles
        obs = env.step({"action": np.zeros(env.act_space["action"].shape, np.float32), "reset": reset})
        assert "image" not in obs
    env.close()


def test_collecting_every_target_ends_the_maze_as_terminal():
    build = _build("rodent_maze_forage")
    env, physics = build.env, build.env.physics
    targets = env.task.targets
    for target in targets[:-1]:
        target.activate(physics)
    freejoint = mjcf.get_frame_freejoint(build.walker.mjcf_model)
    with physics.reset_context():
        physics.bind(freejoint).qpos[:3] = physics.bind(targets[-1].geom).xpos
    timestep = env.step(_zero(build))
    assert timestep.last() and timestep.discount == 0.0
    assert build.log_metrics(physics)["targets_fraction"] == 1.0


def test_maze_layout_follows_the_seed():
    a, b, c = _build("rodent_maze_forage", seed=3), _build("rodent_maze_forage", seed=3), _build("rodent_maze_forage", seed=4)
    layout = [x.env.task._maze_arena.maze.entity_layer for x in (a, b, c)]  # noqa: SLF001
    assert str(layout[0]) == str(layout[1]) and str(layout[0]) != str(layout[2])
    a.env.reset(), b.env.reset()  # and so do the next episodes' mazes
    assert str(a.env.task._maze_arena.maze.entity_layer) == str(b.env.task._maze_arena.maze.entity_layer)  # noqa: SLF001


def test_two_touch_rewards_a_second_touch_after_the_interval():
    build = _build("rodent_two_touch")
    env, physics, task = build.env, build.env.physics, build.env.task
    hand = task._lhand_body  # noqa: SLF001 - the paw the stock task checks
    orb = task._targets[0][0]  # noqa: SLF001

    def put_orb(position):
        physics.bind(orb.geom).pos = position
        physics.forward()

    def far():
        return np.asarray(physics.bind(hand).xpos) + np.array([1.0, 1.0, 0.0])

    put_orb(far())
    assert env.step(_zero(build)).reward < 1.0  # only the small closeness term
    put_orb(physics.bind(hand).xpos)
    first = env.step(_zero(build))
    assert 25.0 <= first.reward < 25.5
    assert build.log_metrics(physics)["trials"] == 1.0
    put_orb(far())
    for _ in range(39):  # 0.8 s of control steps after the first touch
        assert env.step(_zero(build)).reward < 1.0
    put_orb(physics.bind(hand).xpos)
    second = env.step(_zero(build))
    assert 25.0 <= second.reward < 25.5
    assert build.log_metrics(physics)["successes"] == 1.0


def test_two_touch_is_reproducible_from_the_seed():
    def first_target(index):
        env = make_env(_config("rodent_two_touch", **{"env.keys": NO_IMAGE}), index)
        obs = env.step({"reset": True})
        env.close()
        return obs["target"]

    a, b, c = first_target(0), first_target(0), first_target(1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_escape_origin_observation_and_reward_range():
    build = _build("rodent_escape_bowl")
    env, physics = build.env, build.env.physics
    timestep = env.step(_zero(build))
    torso = np.asarray(physics.bind(build.walker.root_body).xpos)
    origin = timestep.observation[build.task_obs["origin"]]
    assert np.linalg.norm(origin) == pytest.approx(np.linalg.norm(torso), rel=1e-5)
    assert 0.0 <= timestep.reward <= 1.0
    assert build.log_metrics(physics)["escaped"] == 0.0  # it starts in the middle


def test_falling_into_a_gap_ends_run_gaps_as_terminal():
    build = _build("rodent_run_gaps")
    env, physics = build.env, build.env.physics
    timestep = env.step(_zero(build))
    assert not timestep.last()
    assert abs(build.log_metrics(physics)["distance"]) < 0.1
    freejoint = mjcf.get_frame_freejoint(build.walker.mjcf_model)
    with physics.reset_context():
        physics.bind(freejoint).qpos[2] = -1.0
    timestep = env.step(_zero(build))
    assert timestep.last() and timestep.discount == 0.0
    assert build.log_metrics(physics)["fell"] == 1.0

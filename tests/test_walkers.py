"""Walkers: mouse derivation, standing under zero action, ball actuation, own-body hiding."""

import mujoco
import numpy as np
import pytest

import dreamer_rodent  # noqa: F401
from dm_control import mjcf
from dm_control.locomotion.arenas import floors

from dreamer_rodent.config import build_config
from dreamer_rodent.env import make_env
from tasks import base
from tasks.walkers import mouse


def _config(**flags):
    flags.setdefault("env.image_size", 16)
    return build_config(flags=flags)


def _physics(walker):
    arena = floors.Floor(size=(1, 1))
    walker.create_root_joints(arena.attach(walker))
    base.cheapen_visuals(arena.mjcf_model)
    return mjcf.Physics.from_mjcf_model(arena.mjcf_model)


def test_mouse_is_the_rat_scaled_to_mouse_size():
    rat = base.make_walker("rat", _config())
    mus = base.make_walker("mouse", _config())
    rat_physics, mouse_physics = _physics(rat), _physics(mus)
    rat_mass = rat_physics.bind(rat.root_body).subtreemass
    mouse_mass = mouse_physics.bind(mus.root_body).subtreemass
    assert 0.30 < rat_mass < 0.36
    assert 0.020 <= mouse_mass <= 0.030
    assert len(mus.actuators) == len(rat.actuators) == 38
    # Lengths scale by s, the skin is gone, actuator gains by s^4.
    assert mus.upright_height == pytest.approx(rat.upright_height * mouse.SCALE)
    assert mus.mjcf_model.find("skin", "skin") is None
    rat_gain = rat_physics.bind(rat.actuators).gainprm[:, 0]
    mouse_gain = mouse_physics.bind(mus.actuators).gainprm[:, 0]
    np.testing.assert_allclose(mouse_gain, rat_gain * mouse.SCALE**4, rtol=1e-6)


@pytest.mark.parametrize("task", ["mouse_goto", "rodent_goto"])
def test_rodent_stands_for_two_seconds_under_zero_action(task):
    env = make_env(_config(task=task, **{"env.keys": ["vestibular", "proprio"]}))
    obs = env.step({"reset": True})
    start_height = env.physics.bind(env.walker.root_body).xpos[2]
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    heights, ups = [], []
    for _ in range(int(round(2.0 / 0.02))):
        obs = env.step({"action": zero, "reset": False})
        heights.append(env.physics.bind(env.walker.root_body).xpos[2])
        ups.append(obs["log/upright"])
    env.close()
    assert min(heights[-10:]) > 0.6 * start_height, (start_height, heights[-10:])
    assert min(ups) > 0.8
    # The vestibular world z-axis agrees: gravity points down the torso's z.
    assert obs["vestibular"][11] > 0.8


def test_ball_rolls_forward_and_steers():
    env = make_env(_config(task="ball_goto", **{"env.keys": ["vestibular", "proprio"]}))
    env.step({"reset": True})
    physics, walker = env.physics, env.walker
    start = physics.bind(walker.head).xpos.copy()
    heading = physics.bind(walker.root_body).xmat.reshape(3, 3)[:, 0].copy()
    for _ in range(25):
        obs = env.step({"action": np.array([1.0, 0.0, 0.0], np.float32), "reset": False})
    moved = physics.bind(walker.head).xpos - start
    assert np.dot(moved[:2], heading[:2]) > 0.05  # rolled forward along its heading
    assert obs["vestibular"].shape == (12,)
    yaw_before = physics.named.data.qpos["walker/steer"].copy()
    for _ in range(10):
        env.step({"action": np.array([0.0, 1.0, 0.0], np.float32), "reset": False})
    assert physics.named.data.qpos["walker/steer"] > yaw_before + 0.05
    env.close()


def _seen_geoms(physics, camera, scene_option=None):
    seg = physics.render(32, 32, camera_id=camera, segmentation=True, scene_option=scene_option)
    return {int(g) for g, t in seg.reshape(-1, 2) if g >= 0 and t == mujoco.mjtObj.mjOBJ_GEOM}


@pytest.mark.parametrize("name", ["rat", "mouse", "ball"])
def test_own_body_is_hidden_from_the_ego_camera_only(name):
    walker = base.make_walker(name, _config())
    physics = _physics(walker)
    physics.forward()
    walker_geoms = set(physics.bind(walker.mjcf_model.find_all("geom")).element_id)
    ego_camera = walker.ego_camera.full_identifier
    # Without our scene option the egocentric camera sees parts of its own head...
    assert _seen_geoms(physics, ego_camera) & walker_geoms
    # ...with it, none; and the floor is still there.
    seen = _seen_geoms(physics, ego_camera, walker.observables.ego_image.scene_option)
    assert not seen & walker_geoms
    assert seen
    # Third-person cameras with default options show the walker.
    assert _seen_geoms(physics, f"{walker.mjcf_model.model}/back") & walker_geoms


def test_bad_camera_name_lists_the_walker_cameras():
    with pytest.raises(ValueError, match="available: .*egocentric"):
        base.make_walker("rat", _config(**{"env.camera": "egocentrik"}))
    with pytest.raises(ValueError, match="unknown walker 'hamster'.*rat, mouse, ball"):
        base.make_walker("hamster", _config())


@pytest.mark.parametrize("task", ["rodent_goto", "ball_goto"])
def test_third_person_view_shows_the_skin_not_the_collision_capsules(task):
    env = make_env(build_config(["debug"], {"task": task}), 0)
    try:
        env.step({"action": np.zeros(env.act_space["action"].shape, np.float32), "reset": True})

        def teal(frame):  # the rat's collision geoms are (0, 0.6, 0.7) and (0, 0.5, 0.5); its skin is grey
            f = frame.astype(int)
            return int(np.sum((f[..., 1] - f[..., 0] > 60) & (f[..., 2] - f[..., 0] > 60)))

        plain, debug = env.render(None, 160, 120), env.render(None, 160, 120, collision=True)
        if env.physics.model.nskin:  # the rat: skin only by default, the capsules on request
            assert teal(plain) == 0 and teal(debug) > 10
            assert np.mean(np.abs(plain.astype(int) - debug.astype(int))) > 0.1
        else:  # the ball has no skin: its geoms are its body and stay visible
            assert np.array_equal(plain, debug)
            assert np.std(plain) > 5
    finally:
        env.close()

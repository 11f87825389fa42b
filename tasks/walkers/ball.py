"""A rolling ball with a head: a cheap walker so any task can be tested fast.

A 3 cm ball (the shell) rolls under a chassis that slides in x, y, z and turns
about z (`steer`), so it cannot tip over; a head on a pitch joint (`neck`) carries
the egocentric camera and the same vestibular sensors as the rodents (gyro,
accelerometer and velocimeter at a head site, world z-axis in the torso frame).
Three actuators: roll (forward/back torque on the shell), steer (yaw torque) and
neck (head pitch, position-controlled), so the action space is small but real.
"""

from __future__ import annotations

import os

import numpy as np
from dm_control import composer, mjcf
from dm_control.locomotion.walkers import base as walker_base
from dm_control.locomotion.walkers import legacy_base

from tasks import base
from tasks.walkers import senses

_XML_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "ball.xml")


class Ball(senses.EgoCameraWalker, legacy_base.Walker):
    """The rolling ball with a head (about 155 g, 3 actuators)."""

    physics_timestep = 0.005
    control_timestep = 0.02

    def _build(self, camera: str = "egocentric", image_size: int = 64, name: str = "walker", initializer=None):
        super()._build(initializer=initializer)
        self._mjcf_root = mjcf.from_path(_XML_PATH)
        if name:
            self._mjcf_root.model = name
        base.move_geoms_to_walker_group(self._mjcf_root)
        self._root_joints = None
        self._setup_camera(camera, image_size)

    def create_root_joints(self, attachment_frame):
        self._root_joints = [
            attachment_frame.add("joint", name=f"root_{axis}", type="slide", axis=vec, limited=False)
            for axis, vec in (("x", [1, 0, 0]), ("y", [0, 1, 0]), ("z", [0, 0, 1]))
        ]

    def set_pose(self, physics, position=None, quaternion=None):
        """Places the ball; only the yaw of `quaternion` applies (it cannot tip)."""
        if position is not None:
            physics.bind(self._root_joints).qpos = position
        if quaternion is not None:
            w, x, y, z = quaternion
            physics.bind(self._mjcf_root.find("joint", "steer")).qpos = np.arctan2(
                2 * (w * z + x * y), 1 - 2 * (y * y + z * z)
            )

    def set_velocity(self, physics, velocity=None, angular_velocity=None):
        if velocity is not None:
            physics.bind(self._root_joints).qvel = velocity
        if angular_velocity is not None:
            physics.bind(self._mjcf_root.find("joint", "steer")).qvel = angular_velocity[2]

    def shift_pose(self, physics, position=None, quaternion=None, rotate_velocity=False):
        """Sets the pose absolutely (the ball's root is at the floor at pose 0)."""
        self.set_pose(physics, position, quaternion)

    def reinitialize_pose(self, physics, random_state):
        joints = self._mjcf_root.find_all("joint")
        physics.bind(joints).qpos = 0.0
        physics.bind(joints).qvel = 0.0
        if self._root_joints is not None:
            physics.bind(self._root_joints).qpos = 0.0
            physics.bind(self._root_joints).qvel = 0.0

    @property
    def upright_pose(self):
        return walker_base.WalkerPose()

    @property
    def mjcf_model(self):
        return self._mjcf_root

    @composer.cached_property
    def actuators(self):
        return tuple(self._mjcf_root.find_all("actuator"))

    @composer.cached_property
    def root_body(self):
        return self._mjcf_root.find("body", "torso")

    @composer.cached_property
    def head(self):
        return self._mjcf_root.find("body", "skull")

    @composer.cached_property
    def end_effectors(self):
        return (self._mjcf_root.find("body", "skull"),)

    @composer.cached_property
    def observable_joints(self):
        return tuple(self._mjcf_root.find_all("joint"))

    @composer.cached_property
    def ground_contact_geoms(self):
        return (self._mjcf_root.find("geom", "shell"),)

    @composer.cached_property
    def egocentric_camera(self):
        return self._ego_camera

    def _build_observables(self):
        return BallObservables(self)


class BallObservables(senses.SenseObservables, legacy_base.WalkerObservables):
    """Vestibular, proprio and image groups matching the rodents'."""

    @property
    def proprio(self):
        return [self.joints_pos, self.joints_vel, self.body_height]

"""A mouse derived from the dm_control rat by uniform scaling.

No public full-body actuated mouse MJCF is installable (talmolab's stac-mjx mouse
is a kinematic skeleton without actuators; vnl-playground has forelimbs only), so
the mouse is the rat at s = 0.45 of its length, with every quantity scaled so the
dynamics stay similar (same damping ratios, same strength relative to weight):

- positions and sizes (bodies, geoms, sites, joints, cameras): s
- mass: s^3 from the geometry, then densities x DENSITY_FACTOR so the mouse weighs
  about 26 g (a lab mouse: 20-30 g) instead of 31 g
- joint stiffness s^4 (torque per radian scales as weight x length)
- joint damping s^4.5 (damping ratio c / 2 sqrt(k I) with I ~ s^5 stays put)
- joint armature s^5 (an inertia)
- actuator gain, bias and force range s^4 (torques)
- the rat's skin mesh is removed (it is a fixed-size mesh; the geoms show the body)

Angles (joint ranges, orientations, fixed-tendon coefficients) do not scale.
Its gait is not validated against mouse kinematics: it is a rat-shaped mouse.
"""

from __future__ import annotations

import numpy as np

from tasks.walkers import rat

SCALE = 0.45
DENSITY_FACTOR = 0.85


def _scaled(value, factor):
    return None if value is None else np.asarray(value, dtype=float) * factor


def scale_model(root, s: float = SCALE, density_factor: float = DENSITY_FACTOR) -> None:
    """Scales a rat-like MJCF model in place (see the module docstring)."""
    for tag in ("body", "geom", "site", "joint", "camera"):
        for element in root.find_all(tag):
            if element.pos is not None:
                element.pos = _scaled(element.pos, s)
    for tag in ("geom", "site"):
        for element in root.find_all(tag):
            if element.size is not None:
                element.size = _scaled(element.size, s)
            if element.fromto is not None:
                element.fromto = _scaled(element.fromto, s)
    for geom in root.find_all("geom"):
        if geom.density is not None:
            geom.density = geom.density * density_factor

    def scale_joint(joint):
        if joint.stiffness is not None:
            joint.stiffness = joint.stiffness * s**4
        if joint.damping is not None:
            joint.damping = joint.damping * s**4.5
        if joint.armature is not None:
            joint.armature = joint.armature * s**5

    def scale_actuator(actuator):
        for attr in ("gainprm", "biasprm", "forcerange"):
            value = getattr(actuator, attr)
            if value is not None:
                setattr(actuator, attr, _scaled(value, s**4))

    for joint in root.find_all("joint"):
        scale_joint(joint)
    for actuator in root.find_all("actuator"):
        scale_actuator(actuator)
    for default in root.find_all("default"):  # includes the top-level default
        if default.geom is not None:
            if default.geom.density is not None:
                default.geom.density = default.geom.density * density_factor
            if default.geom.size is not None:
                default.geom.size = _scaled(default.geom.size, s)
        if default.joint is not None:
            if default.joint.pos is not None:
                default.joint.pos = _scaled(default.joint.pos, s)
            scale_joint(default.joint)
        if default.general is not None:
            scale_actuator(default.general)
    if root.statistic.meansize is not None:
        root.statistic.meansize = root.statistic.meansize * s


class Mouse(rat.Rat):
    """A rat-shaped mouse of about 26 g (38 actuators, actions in [-1, 1])."""

    def _customize(self) -> None:
        skin = self._mjcf_root.find("skin", "skin")
        if skin is not None:
            skin.remove()
        scale_model(self._mjcf_root)
        super()._customize()

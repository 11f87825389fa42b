"""The dm_control Rat with our egocentric camera and observable groups.

The stock `egocentric_camera` observable hard-codes its render flags (shadows,
reflections, skybox, 64x64), and stock renders of a camera inside the skull show
the skull. Here every rat geom moves to `base.WALKER_GEOM_GROUP`, hidden (with the
skin) from the agent's camera, which renders with cheap flags at our image size.
The stock `prev_action` raises NotImplementedError, so it is never enabled.
"""

from __future__ import annotations

from dm_control.locomotion.walkers import rodent

from tasks import base
from tasks.walkers import senses

# Physics and control steps for rodent tasks (dm_control's rodent tasks use these).
PHYSICS_TIMESTEP = 0.001
CONTROL_TIMESTEP = 0.02


class Rat(senses.EgoCameraWalker, rodent.Rat):
    """A 338 g position-controlled rat (38 actuators, actions in [-1, 1])."""

    physics_timestep = PHYSICS_TIMESTEP
    control_timestep = CONTROL_TIMESTEP

    def _build(self, camera: str = "egocentric", image_size: int = 64, name: str = "walker", **kwargs):
        super()._build(name=name, **kwargs)
        self._customize()
        self._setup_camera(camera, image_size)

    def _customize(self) -> None:
        """Hook for subclasses that reshape the model (the mouse)."""
        base.move_geoms_to_walker_group(self._mjcf_root)

    def _build_observables(self):
        return RatObservables(self)


class RatObservables(senses.SenseObservables, rodent.RodentObservables):
    """The rat's observables plus our groups (`vestibular`, `proprio`, `ego_image`)."""

    @property
    def proprio(self):
        """Joint angles and velocities, tendons, actuator states, body geometry, touch."""
        return [
            self.joints_pos,
            self.joints_vel,
            self.tendons_pos,
            self.tendons_vel,
            self.actuator_activation,
            self.body_height,
            self.end_effectors_pos,
            self.appendages_pos,
            self.sensors_touch,
        ]

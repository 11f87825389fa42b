"""What every walker of ours adds to its dm_control base: the agent's senses.

A named egocentric camera rendered at the agent's image size with cheap flags,
and the observable groups the env adapter reads (`ego_image`, `vestibular`).
Mixed into the rat (and so the mouse) and the ball, so that any walker serves in
any task with the same keys.
"""

from __future__ import annotations

from dm_control import composer

from tasks import base


class EgoCameraWalker:
    """Finds the walker's egocentric camera by name (`env.camera`)."""

    def _setup_camera(self, camera: str, image_size: int) -> None:
        self.image_size = int(image_size)
        self._ego_camera = self._mjcf_root.find("camera", camera)
        if self._ego_camera is None:
            raise base.TaskConfigError(
                f"env.camera '{camera}' is not a camera of the {type(self).__name__.lower()} walker; "
                f"available: {', '.join(self.camera_names)}."
            )

    @property
    def ego_camera(self):
        return self._ego_camera

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self._mjcf_root.find_all("camera")]

    @property
    def upright_height(self) -> float:
        """Torso height of the spawn pose (root at the floor)."""
        return float(self._mjcf_root.find("body", "torso").pos[2])


class SenseObservables:
    """The `ego_image` observable and the 12-float `vestibular` group."""

    @composer.observable
    def ego_image(self):
        return base.ego_camera_observable(self._entity.ego_camera, self._entity.image_size)

    @property
    def vestibular(self):
        """Head gyro, head accelerometer, head velocimeter, world z in the torso frame."""
        return [self.sensors_gyro, self.sensors_accelerometer, self.sensors_velocimeter, self.world_zaxis]

"""The env adapter: a registered dm_control task as dicts of numpy arrays.

`make_env(config, index)` builds `config.task` from the registry and returns an
`Env` whose `step({'action': a, 'reset': bool})` returns one observation dict:
`reward`, `is_first`, `is_last`, `is_terminal`, the sensory keys on in
`config.env.keys` (`image`, `vestibular`, `proprio`, task keys such as `target`)
and `log/...` metrics that never go to the agent (read after the last physics
step of an action repeat; `log/success` is set if any of its sub-steps had it,
so a target reached mid-repeat counts as a success). Terminal means the task ended
the episode (discount 0); the time limit gives `is_last` without `is_terminal`.

dm_control is imported on the first `make_env`, not with this module, so that a
worker process can choose its EGL device first (see `dreamer_rodent.egl`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dreamer_rodent  # noqa: F401  (sets MUJOCO_GL before dm_control is imported)
from dreamer_rodent.egl import apply_egl_device
from dreamer_rodent.spaces import Space

LOG_PREFIX = "log/"
THIRD_PERSON_CAMERAS = ("side_alt", "side", "back", "top")


def make_env(config, index: int = 0) -> "Env":
    """Builds `config.task` seeded with `seed * env.seed_stride + index`."""
    apply_egl_device(config, index)
    from tasks import registry

    registry.load_module(str(config.get("task_module", "") or ""))  # a plugin task outside tasks/
    entry = registry.get(config.task)  # unknown names raise, listing the known ones
    seed = int(config.seed) * int(config.env.seed_stride) + int(index)
    build = entry.factory(config, seed)
    return Env(build, config, task=config.task, seed=seed)


class Env:
    """One environment; see the module docstring for the step protocol."""

    def __init__(self, build, config, task: str = "", seed: int = 0):
        from tasks import base

        self._base = base
        self._build = build
        self._env = build.env
        self.task = task
        self.seed = seed
        self._repeat = int(config.env.action_repeat)
        if self._repeat < 1:
            raise ValueError(f"env.action_repeat must be >= 1, got {self._repeat}.")
        self._keys = tuple(build.keys)
        self._reports_success = False  # whether the task's log_metrics has `success`: known from the first observation

        spec = self._env.action_spec()
        self._act_low = np.asarray(spec.minimum, np.float64) * np.ones(spec.shape)
        self._act_high = np.asarray(spec.maximum, np.float64) * np.ones(spec.shape)
        self._act_shape = tuple(spec.shape)

        # The first reset happens here so that the spaces (log metrics included)
        # come from a real observation; the first step() returns it.
        self._pending = self._env.reset()
        self._done = False
        self._closed = False
        self._cameras: dict = {}
        self._skin_option = None  # built on the first third-person render of a skinned walker
        first = self._convert(self._pending.observation, 0.0, True, False, False)
        self._columns = self._make_columns(self._pending.observation)
        self._obs_space = self._make_obs_space(first)
        self._act_space = {
            "action": Space(self._act_shape, np.float32, -1.0, 1.0),
            "reset": Space((), bool),
        }

    # ---- spaces ----
    @property
    def obs_space(self) -> dict[str, Space]:
        return dict(self._obs_space)

    @property
    def act_space(self) -> dict[str, Space]:
        return dict(self._act_space)

    def _make_obs_space(self, first: dict) -> dict[str, Space]:
        spaces = {
            "reward": Space((), np.float32),
            "is_first": Space((), bool),
            "is_last": Space((), bool),
            "is_terminal": Space((), bool),
        }
        for key, value in first.items():
            if key in spaces:
                continue
            if key == "image":
                spaces[key] = Space(value.shape, np.uint8, 0, 255)
            elif key == "vestibular" and value.shape != (self._base.VESTIBULAR_SIZE,):
                raise ValueError(
                    f"task '{self.task}' gives a vestibular vector of shape {value.shape}, the contract says "
                    f"({self._base.VESTIBULAR_SIZE},): gyro, accelerometer, velocimeter, world z-axis."
                )
            else:
                spaces[key] = Space(value.shape, np.float32)
        return spaces

    @property
    def obs_columns(self) -> dict[str, list[str]]:
        """What each number of a vector observation is: 'walker/sensors_gyro[0]', ... per key (recordings label
        their columns with these)."""
        return {k: list(v) for k, v in self._columns.items()}

    def _make_columns(self, raw: dict) -> dict[str, list[str]]:
        def names(sources):
            out = []
            for name in sources:
                size = int(np.size(raw[name]))
                out += [name] if size == 1 else [f"{name}[{i}]" for i in range(size)]
            return out

        build = self._build
        columns = {group: names(sources) for group, sources in (("vestibular", build.vestibular),
                                                                  ("proprio", build.proprio)) if sources}
        columns.update({key: names([name]) for key, name in build.task_obs.items()})
        return columns

    # ---- stepping ----
    def step(self, action: dict[str, Any]) -> dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError("step() on a closed Env; make a new one with make_env().")
        if bool(action.get("reset", False)) or self._done or self._pending is not None:
            return self._reset()
        if "action" not in action:
            raise KeyError(f"step() needs an 'action' key (float32 {self._act_shape} in [-1, 1]), got {sorted(action)}.")
        act = np.asarray(action["action"], np.float64)
        if act.shape != self._act_shape:
            raise ValueError(f"action has shape {act.shape}; task '{self.task}' expects {self._act_shape}.")
        if not np.all(np.isfinite(act)):
            raise ValueError(f"action contains NaN or inf: {act}; check the policy's outputs.")
        act = np.clip(act, -1.0, 1.0)
        act = self._act_low + (act + 1.0) * 0.5 * (self._act_high - self._act_low)
        reward, success = 0.0, 0.0
        for index in range(self._repeat):
            timestep = self._env.step(act)
            reward += timestep.reward or 0.0
            if timestep.last():
                break
            if self._reports_success and index < self._repeat - 1:
                # The task's `success` is its own step's: a reach on an inner sub-step counts too.
                success = max(success, float(self._build.log_metrics(self._env.physics)["success"]))
        last = timestep.last()
        terminal = bool(last and timestep.discount == 0.0)
        self._done = last
        return self._convert(timestep.observation, reward, False, last, terminal, success)

    def _reset(self) -> dict[str, np.ndarray]:
        timestep = self._pending if self._pending is not None else self._env.reset()
        self._pending = None
        self._done = False
        return self._convert(timestep.observation, 0.0, True, False, False)

    def _convert(self, obs, reward, first, last, terminal, success: float = 0.0) -> dict[str, np.ndarray]:
        build = self._build
        out = {
            "reward": np.float32(reward),
            "is_first": np.bool_(first),
            "is_last": np.bool_(last),
            "is_terminal": np.bool_(terminal),
        }
        if build.image is not None:
            out["image"] = np.asarray(obs[build.image], np.uint8)
        if build.vestibular:
            out["vestibular"] = np.concatenate([np.ravel(obs[k]) for k in build.vestibular]).astype(np.float32)
        if build.proprio:
            out["proprio"] = np.concatenate([np.ravel(obs[k]) for k in build.proprio]).astype(np.float32)
        for key, name in build.task_obs.items():
            out[key] = np.asarray(obs[name], np.float32).ravel()
        metrics = build.log_metrics(self._env.physics)
        self._reports_success = "success" in metrics  # the inner sub-steps of a repeat read it only then
        for key, value in metrics.items():
            out[LOG_PREFIX + key] = np.float32(max(value, success) if key == "success" else value)
        return out

    # ---- curriculum ----
    def curriculum_state(self) -> dict:
        return self._build.state_dict()

    def load_curriculum_state(self, state: dict) -> None:
        """Restores the curriculum; the next step starts an episode at its level."""
        self._build.load_state_dict(state)
        if self._pending is not None:  # drawn at the old level: draw again
            self._pending = None
            self._done = True

    def reseed(self, seed: int) -> None:
        """Reseeds the task's random state; the next step starts an episode drawn from it.

        A resumed run rebuilds its envs with the run's seeds; without a new seed
        they would replay the random draws (spawn poses, targets, mazes) of the
        run's first episodes after every resume.
        """
        self._env.random_state.seed(int(seed) % 2**32)
        self.seed = int(seed)
        if self._pending is not None:  # drawn from the old seed: draw again
            self._pending = None
            self._done = True

    @property
    def dt(self) -> float:
        """Simulated seconds per `step` (control timestep x action repeat)."""
        return float(self._env.control_timestep()) * self._repeat

    # ---- cameras ----
    @property
    def physics(self):
        return self._env.physics

    @property
    def walker(self):
        return self._build.walker

    def camera_names(self) -> list[str]:
        model = self._env.physics.model
        return [model.id2name(i, "camera") for i in range(model.ncam)]

    def _camera_id(self, camera: str) -> str:
        names = self.camera_names()
        if camera in names:
            return camera
        matches = [n for n in names if n.split("/")[-1] == camera]
        if len(matches) == 1:
            return matches[0]
        hint = f" ('{camera}' matches several: {matches})" if matches else ""
        raise ValueError(f"unknown camera '{camera}'{hint}; available cameras: {', '.join(names)}.")

    @property
    def default_camera(self) -> str:
        """A third-person camera that tracks the walker."""
        names = self.camera_names()
        walker_cams = self.walker.camera_names
        for short in THIRD_PERSON_CAMERAS:
            if short in walker_cams:
                return self._camera_id(short)
        return names[0]

    def render(self, camera: str | None = None, width: int = 320, height: int = 240,
               collision: bool = False) -> np.ndarray:
        """A third-person RGB view (uint8 [height, width, 3]) with cheap render flags.

        A walker with a skin (the rat, the mouse) is shown as its skin: its geoms, all
        collision capsules, poke through it in teal and are hidden unless `collision`.
        """
        from dm_control.mujoco import engine

        camera_id = self._camera_id(camera or self.default_camera)
        physics = self._env.physics
        # One MuJoCo camera per view, reused: building one costs more than a frame.
        key = (id(physics), camera_id, int(width), int(height))
        if key not in self._cameras:
            if len(self._cameras) >= 8:
                self._cameras.clear()
            self._cameras[key] = engine.Camera(physics, height=int(height), width=int(width), camera_id=camera_id)
        option = None
        if physics.model.nskin and not collision:
            if self._skin_option is None:
                self._skin_option = self._base.skin_scene_option()
            option = self._skin_option
        pixels = self._cameras[key].render(scene_option=option,
                                           render_flag_overrides=dict(self._base.CHEAP_RENDER_FLAGS))
        return np.array(pixels, np.uint8)  # a copy: the camera reuses its buffer for the next frame

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._cameras.clear()
            self._env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

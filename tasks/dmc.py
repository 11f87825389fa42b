"""dm_control suite tasks as benchmark tasks (`dmc_<domain>_<task>`).

They are here to check the agent against published DreamerV3 scores
(`../shared/anchors/dmc_proprio_published.csv`), so they follow DreamerV3's
`dmc_proprio` conventions: the suite's own episodes (1000 control steps for
every task here, e.g. 10 s of cartpole at 10 ms, 25 s of walker at 25 ms; the
suite's end is `is_last`, never `is_terminal`, since these tasks do not end
early), rewards in [0, 1] per step (returns in [0, 1000]), action repeat 1 and
one env step per agent step. Their registration names the `dmc_proprio` preset,
which `--task dmc_...` applies first.

Observations keep the adapter's contract. `proprio` is the suite's observation
vectors flattened and concatenated in the suite's order; the TaskBuild names
them (cartpole: `position` (3) then `velocity` (2)). `image`, only when
`env.keys` has it, is the suite's usual camera at `env.image_size` (camera 0,
camera 2 for quadruped, as DreamerV3 renders them; `env.camera` names a
walker camera and is not used here). There is no vestibular sense and there are
no task keys: the suite puts its task cues (reacher's `to_target`, finger's
`target_position`) into the observation vector.

`env.time_limit` caps an episode (a shorter evaluation); it never lengthens the
suite's. The suite env is wrapped (`SuiteEnv`) to offer what the adapter reads
from a composer env.
"""

from __future__ import annotations

import dataclasses
import math

import dm_env
import numpy as np
from dm_control import suite
from dm_control.mujoco import engine
from dm_control.rl import control

from tasks import base
from tasks.registry import register

PRESET = "dmc_proprio"
KEYS = ("image", "proprio")  # the sensory groups a suite task offers

# DreamerV3's camera for the agent's image: 0 except where that camera shows little.
IMAGE_CAMERAS = {"quadruped": 2}

# (domain, task, what the agent must do): DreamerV3's DMC proprio benchmark.
SUITE_TASKS = (
    ("acrobot", "swingup", "Acrobot swings its two-link arm up and balances it upside down."),
    ("ball_in_cup", "catch", "Swings a ball on a string into a cup held by a planar arm."),
    ("cartpole", "balance", "Keeps a pole upright on a cart, starting near upright."),
    ("cartpole", "balance_sparse", "Keeps a pole upright on a cart; reward only while within bounds."),
    ("cartpole", "swingup", "Swings a pole up from hanging down and balances it on a moving cart."),
    ("cartpole", "swingup_sparse", "Swings a pole up and balances it; reward only when nearly upright."),
    ("cheetah", "run", "Planar cheetah runs forward as fast as it can."),
    ("finger", "spin", "A two-joint finger spins a hinged body."),
    ("finger", "turn_easy", "A two-joint finger turns a hinged body to a target angle (wide target)."),
    ("finger", "turn_hard", "A two-joint finger turns a hinged body to a target angle (narrow target)."),
    ("hopper", "hop", "One-legged planar hopper hops forward."),
    ("hopper", "stand", "One-legged planar hopper stands up straight."),
    ("pendulum", "swingup", "Swings a torque-limited pendulum up and balances it."),
    ("quadruped", "run", "Four-legged ant-like body runs forward."),
    ("quadruped", "walk", "Four-legged ant-like body walks forward."),
    ("reacher", "easy", "Two-link planar arm reaches a large target."),
    ("reacher", "hard", "Two-link planar arm reaches a small target."),
    ("walker", "run", "Planar biped runs forward."),
    ("walker", "stand", "Planar biped stands up straight."),
    ("walker", "walk", "Planar biped walks forward."),
)


@dataclasses.dataclass(frozen=True)
class SuiteBody:
    """Stands in for a walker: the adapter picks the video camera from `camera_names`."""

    domain: str
    camera_names: tuple[str, ...]


class SuiteEnv:
    """A suite `control.Environment` with what the adapter reads from a composer env.

    That is `reset`/`step` returning timesteps whose observation holds the keys
    the TaskBuild names, `action_spec`, `physics`, `random_state` (reseeding),
    `control_timestep` and `close`. It adds `image` to the observation, ends an
    episode at `max_steps` when that comes before the suite's own end, and ends a
    diverged simulation as terminal instead of raising, as `base.build` does for
    composer tasks, so that one bad action does not kill a long run.
    """

    def __init__(self, env: control.Environment, max_steps: int, image_camera: int | None = None,
                 image_size: int = 64):
        self._env = env
        self._max_steps = int(max_steps)
        self._steps = 0
        self._camera = None
        if image_camera is not None:
            self._camera = engine.Camera(env.physics, height=image_size, width=image_size, camera_id=image_camera)
        self._last_observation = None

    @property
    def physics(self):
        return self._env.physics

    @property
    def random_state(self) -> np.random.RandomState:
        return self._env.task.random

    def action_spec(self):
        return self._env.action_spec()

    def observation_spec(self):
        return self._env.observation_spec()

    def control_timestep(self) -> float:
        return self._env.control_timestep()

    def reset(self) -> dm_env.TimeStep:
        self._steps = 0
        return self._observe(self._env.reset())

    def step(self, action) -> dm_env.TimeStep:
        try:
            timestep = self._env.step(action)
        except control.PhysicsError as error:
            print(f"warning: {error}; the episode ends as terminal.", flush=True)
            return dm_env.termination(0.0, self._last_observation)
        self._steps += 1
        if self._steps >= self._max_steps and not timestep.last():
            timestep = timestep._replace(step_type=dm_env.StepType.LAST)  # discount 1: a time limit
        return self._observe(timestep)

    def _observe(self, timestep: dm_env.TimeStep) -> dm_env.TimeStep:
        if self._camera is not None:
            timestep = timestep._replace(observation={**timestep.observation, "image": self._camera.render()})
        self._last_observation = timestep.observation
        return timestep

    def close(self) -> None:
        self._camera = None
        self._env.close()


def make_suite(domain: str, task: str, config, seed: int) -> base.TaskBuild:
    """The suite task `domain`/`task` as a TaskBuild for the adapter."""
    keys = base.check_keys(config.env.keys)
    other = [k for k in keys if k not in KEYS]
    if other:
        raise base.TaskConfigError(
            f"dm_control suite tasks offer only {list(KEYS)}, not {other}: there is no vestibular sense and the "
            f"task cues are part of `proprio`. Use --env.keys proprio (the {PRESET} preset) or image,proprio."
        )
    cap = float(config.env.time_limit)
    if cap <= 0:
        raise base.TaskConfigError(f"env.time_limit must be > 0 seconds, got {cap}.")
    size = base.check_image_size(config.env.image_size) if "image" in keys else int(config.env.image_size)
    env = suite.load(domain, task, task_kwargs={"random": int(seed) % 2**32})
    model = env.physics.model
    # The suite's models ask for a 640x480 framebuffer; the composer tasks get OFFSCREEN_SIZE square, so
    # image sizes and eval video sizes have the same limit on every task (the context is made on first render).
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), base.OFFSCREEN_SIZE)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), base.OFFSCREEN_SIZE)
    camera = IMAGE_CAMERAS.get(domain, 0)
    # The first control step at or past the cap ends the episode (as composer's time limit does).
    max_steps = math.ceil(cap / env.control_timestep() - 1e-6)
    wrapped = SuiteEnv(env, max_steps, camera if "image" in keys else None, size)
    return base.TaskBuild(
        env=wrapped,
        walker=SuiteBody(domain, (model.id2name(camera, "camera"),)),
        vestibular=(),
        proprio=tuple(env.observation_spec()) if "proprio" in keys else (),
        task_obs={},
        image="image" if "image" in keys else None,
        log_metrics=base._no_metrics,  # the same no-op defaults composer tasks get from base.build
        state_dict=base._no_state,
        load_state_dict=base._ignore_state,
        keys=keys,
    )


def _register(domain: str, task: str, description: str) -> None:
    @register(f"dmc_{domain}_{task}", description, walker=domain, preset=PRESET, benchmark=True)
    def factory(config, seed: int) -> base.TaskBuild:
        return make_suite(domain, task, config, seed)


for _domain, _task, _description in SUITE_TASKS:
    _register(_domain, _task, _description)

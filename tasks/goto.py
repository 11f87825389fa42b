"""Go to target: bring the head to a target on a flat floor (rat, mouse, ball).

Reward per control step (weights in `task_kwargs`):

    reward = progress_weight * (phi(d) - phi(d_prev))  # progress towards the target
             - posture_weight * max(0, c - up) / (1 + c)  # up: torso z-axis . world z
             + success_bonus * [d < success_radius]   # the head reached the target
    phi(d) = 1 - tanh(d / distance_scale)
    c = cos(posture_free_tilt)

where d is the horizontal distance from the head to the target (the target marker
floats at the walker's head height, so rat, mouse and ball can all reach it) and
d_prev the distance to the same target one step earlier (its spawn distance
right after it appeared). The posture penalty is posture_weight on the back
(up = -1) and nothing while the torso tilts less than `posture_free_tilt`
degrees from upright; at the default 0 it is posture_weight * (1 - up) / 2,
which pays for every degree towards upright, so a rat can earn more by
standing still than by leaning into a reach (eval/RESULTS.md, rodent_goto).
The shaping is a difference of potentials, so it does not change which policy
is best (Ng et al. 1999): an earlier reward of phi(d) per step paid the agent
for hovering just outside the success radius, since reaching the target
respawned it farther away and cut that reward; one ball_goto seed learned
exactly that (eval/RESULTS.md).

Observation `target`: the head-to-target vector in the torso frame, in units of
`success_radius` (|target| < 1 means reached). In metres a near target is ~0.1:
after symlog the world model's reconstruction error was as large as the vector
itself and the agent never learned to steer (eval/RESULTS.md, ball_goto);
in success radii the same vector is ~2-3 and a researcher reads it at a glance.

Success respawns the target; the episode goes on (no terminal state) and ends
only at the time limit. Respawning rather than ending keeps each episode full of
useful data and avoids resets, which cost the most in a rodent env. Body contacts
never end an episode (dm_control's stock GoToTarget does, which with random
actions resets the rat every few steps).

Curriculum (`base.Curriculum`): the target is drawn at a distance from the head
uniform in [1.5 * success_radius, max distance of the episode's level] in a
random direction; levels are `curriculum_levels` (metres). An episode is a
success when the head reached at least one target. When the success rate over
the last `curriculum_window` episodes at the current level reaches
`curriculum_threshold` the level goes up; when it falls below
`curriculum_down_threshold` it goes down; each change clears the window. A
fraction `curriculum_easy_fraction` of episodes is drawn at a uniformly chosen
easier level and does not count towards the window. `level >= 0` pins it;
`curriculum: false` uses the farthest level.

Log metrics (`log/` keys, once per step; the driver keeps each episode's last
value): `targets_reached` (count so far), `targets_per_min` (targets reached per
minute of simulated time so far: at the episode's end, its reach rate),
`first_reach_s` (simulated seconds from the episode's start to the first reach;
NaN until one), `distance`, `success` (this step), `upright`, and the
curriculum's `curriculum_level` (current), `curriculum_episode_level` (this
episode's), `curriculum_easy` (1 for an easy episode), `curriculum_distance`
and `curriculum_success_rate`.
"""

from __future__ import annotations

import numpy as np
from dm_control import composer
from dm_control.composer.observation import observable
from dm_control.locomotion.arenas import floors

from tasks import base
from tasks.registry import register

_TARGET_RGBA = (0.95, 0.55, 0.1, 1.0)


class GoToTarget(composer.Task):
    """Head-to-target with shaped reward, posture penalty and a curriculum."""

    def __init__(self, walker, arena, curriculum: base.Curriculum, success_radius: float, success_bonus: float,
                 posture_weight: float, distance_scale: float, progress_weight: float, posture_free_tilt: float):
        if success_radius <= 0:
            raise base.TaskConfigError(f"task_kwargs.success_radius must be > 0 metres, got {success_radius}.")
        if progress_weight < 0:
            raise base.TaskConfigError(f"task_kwargs.progress_weight must be >= 0, got {progress_weight}.")
        if distance_scale <= 0:
            raise base.TaskConfigError(f"task_kwargs.distance_scale must be > 0 metres, got {distance_scale}.")
        if not 0 <= posture_free_tilt < 180:
            raise base.TaskConfigError(
                f"task_kwargs.posture_free_tilt must be in [0, 180) degrees from upright, got {posture_free_tilt}.")
        self._walker = walker
        self._arena = arena
        self._walker.create_root_joints(self._arena.attach(self._walker))
        self.curriculum = curriculum
        self.success_radius = float(success_radius)
        self.success_bonus = float(success_bonus)
        self.posture_weight = float(posture_weight)
        self._free_up = float(np.cos(np.radians(posture_free_tilt)))  # up above this costs nothing
        self.distance_scale = float(distance_scale)
        self.progress_weight = float(progress_weight)

        self._target = arena.mjcf_model.worldbody.add(
            "site", name="target", type="sphere", size=(max(self.success_radius, 0.01),), rgba=_TARGET_RGBA,
            pos=(0.0, 0.0, 0.05), group=0,
        )
        self._target_observable = observable.Generic(self._egocentric_target)
        self._task_observables = {"target": self._target_observable}

        self._distance = 0.0
        self._previous_potential = 0.0
        self._progress = 0.0
        self._success_now = False
        self._reached = 0
        self._steps = 0
        self._first_reach_s = float("nan")
        self._episode_level = curriculum.level
        self._easy = False
        self._up = 1.0
        self._target_height = 0.05
        self.set_timesteps(physics_timestep=walker.physics_timestep, control_timestep=walker.control_timestep)

    # ---- composer.Task interface ----
    @property
    def root_entity(self):
        return self._arena

    @property
    def task_observables(self):
        return self._task_observables

    @property
    def target_observable(self):
        return self._target_observable

    def initialize_episode(self, physics, random_state):
        if self._steps > 0:  # the episode that just ended (time limit or reset)
            self.curriculum.record(self._reached > 0, self._episode_level)
        self._steps = 0
        self._reached = 0
        self._first_reach_s = float("nan")
        self._success_now = False
        self._episode_level = self.curriculum.draw_level(random_state)
        self._easy = self._episode_level != self.curriculum.level
        base.spawn_walker(physics, self._walker, random_state, (0.0, 0.0))
        physics.forward()  # head position of the new pose, before placing the target
        self._target_height = max(float(physics.bind(self._walker.head).xpos[2]), self.success_radius)
        self._place_target(physics, random_state)  # also measures the distance and starts the potential there
        self._progress = 0.0

    def before_step(self, physics, action, random_state):
        self._walker.apply_action(physics, action, random_state)

    def after_step(self, physics, random_state):
        self._steps += 1
        self._update(physics)
        # The step is scored against the target it reached; a respawn below restarts the potential there.
        potential = self._potential(self._distance)
        self._progress = potential - self._previous_potential
        self._previous_potential = potential
        self._success_now = self._distance < self.success_radius
        if self._success_now:
            if self._reached == 0:
                self._first_reach_s = self.elapsed_s
            self._reached += 1
            self._place_target(physics, random_state)

    def get_reward(self, physics):
        posture = self.posture_weight * max(0.0, self._free_up - self._up) / (1.0 + self._free_up)
        return float(self.progress_weight * self._progress - posture + self.success_bonus * self._success_now)

    def should_terminate_episode(self, physics):
        return False

    def get_discount(self, physics):
        return 1.0

    # ---- helpers ----
    @property
    def elapsed_s(self) -> float:
        """Simulated seconds since the episode started (control steps x control timestep)."""
        return self._steps * float(self.control_timestep)

    @property
    def targets_per_min(self) -> float:
        """Targets reached per minute of simulated time so far in the episode (0 before its first step)."""
        elapsed = self.elapsed_s
        return 60.0 * self._reached / elapsed if elapsed > 0 else 0.0

    def _potential(self, distance: float) -> float:
        return 1.0 - float(np.tanh(distance / self.distance_scale))

    def _update(self, physics):
        head = physics.bind(self._walker.head).xpos
        target = physics.bind(self._target).pos
        self._distance = float(np.hypot(head[0] - target[0], head[1] - target[1]))
        self._up = base.torso_up(physics, self._walker)

    def _place_target(self, physics, random_state):
        head = physics.bind(self._walker.head).xpos
        high = self.curriculum.levels[self._episode_level]
        low = min(1.5 * self.success_radius, high)
        distance = random_state.uniform(low, high)
        angle = random_state.uniform(-np.pi, np.pi)
        self.set_target(
            physics, (head[0] + distance * np.cos(angle), head[1] + distance * np.sin(angle)), self._target_height
        )

    def set_target(self, physics, xy, height: float | None = None) -> None:
        """Moves the target (tests and scripted evaluation use this); progress counts from here."""
        z = physics.bind(self._target).pos[2] if height is None else height
        physics.bind(self._target).pos = (float(xy[0]), float(xy[1]), float(z))
        self._update(physics)
        self._previous_potential = self._potential(self._distance)

    def _egocentric_target(self, physics):
        """Head-to-target vector in the torso frame, in success radii (see the module docstring)."""
        head = physics.bind(self._walker.head).xpos
        target = physics.bind(self._target).pos
        vector = self._walker.transform_vec_to_egocentric_frame(physics, target - head)
        return np.asarray(vector, np.float64) / self.success_radius

    def world_state(self, physics) -> dict[str, tuple]:
        """For recordings: where the target is and how far the head is from it."""
        return {
            "target_position": (np.array(physics.bind(self._target).pos, np.float64), "m",
                                "world position (x, y, z) of the current target; it jumps when reached"),
            "target_distance": (np.float64(self._distance), "m",
                                "horizontal head-to-target distance to the current target (on a reach step the target has already jumped, "
                                "so it never reads below the success radius; see behavior/reward and the epochs)"),
        }

    def log_metrics(self, physics) -> dict[str, float]:
        return {
            "distance": self._distance,
            "success": float(self._success_now),
            "targets_reached": float(self._reached),
            "targets_per_min": self.targets_per_min,
            "first_reach_s": self._first_reach_s,
            "upright": self._up,
            "curriculum_level": float(self.curriculum.level),
            "curriculum_episode_level": float(self._episode_level),
            "curriculum_easy": float(self._easy),
            "curriculum_distance": self.curriculum.value,
            "curriculum_success_rate": self.curriculum.success_rate,
        }


def _arena(config) -> floors.Floor:
    reach = max(float(x) for x in config.task_kwargs.curriculum_levels)
    half = max(2.0, reach + 1.0)
    return floors.Floor(size=(half, half), reflectance=0.0)


def make_goto(walker_name: str, config, seed: int) -> base.TaskBuild:
    kw = config.task_kwargs
    walker = base.make_walker(walker_name, config)
    task = GoToTarget(
        walker,
        _arena(config),
        curriculum=base.Curriculum.from_config(config),
        success_radius=kw.success_radius,
        success_bonus=kw.success_bonus,
        posture_weight=kw.posture_weight,
        posture_free_tilt=kw.posture_free_tilt,
        distance_scale=kw.distance_scale,
        progress_weight=kw.progress_weight,
    )
    return base.build(
        task,
        walker,
        config,
        seed,
        task_obs={"target": task.target_observable},
        log_metrics=task.log_metrics,
        state_dict=task.curriculum.state_dict,
        load_state_dict=task.curriculum.load_state_dict,
        world_state=task.world_state,
    )


@register("rodent_goto", "Rat brings its head to a target on a flat floor; near-to-far curriculum.", walker="rat")
def rodent_goto(config, seed: int) -> base.TaskBuild:
    return make_goto("rat", config, seed)


@register("mouse_goto", "Mouse (rat scaled to 26 g) brings its head to a target on a flat floor.", walker="mouse")
def mouse_goto(config, seed: int) -> base.TaskBuild:
    return make_goto("mouse", config, seed)


@register("ball_goto", "Rolling ball with a head reaches a target on a flat floor (cheap, for tests).", walker="ball")
def ball_goto(config, seed: int) -> base.TaskBuild:
    return make_goto("ball", config, seed)

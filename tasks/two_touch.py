"""Two touch: tap an orb with a forepaw, wait 0.8 s (+-0.1 s), tap it again.

dm_control's `basic_rodent_2020.rodent_two_touch` (a 10 m floor, one 2.5 cm orb
at 14 cm height placed within 1.5 m, 25 reward per correct touch plus a small
paw-to-orb closeness term; the orb moves after each trial) with our walker,
camera and keys, and three changes:
- the touch check runs once per control step on MuJoCo's contact arrays with
  numpy instead of a Python contact scan at every physics substep (20 ms timing
  resolution against a 200 ms tolerance window);
- spawn rotation and orb positions come from the env's seeded random state (the
  stock task draws them from numpy's global generator, so seeds did not repeat);
- task keys: `task_state`, the one-hot trial state (the stock `task_logic`
  integer), and `target`, the orb in the torso frame, so that runs without images
  can still find the orb.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
from dm_control import composer
from dm_control.composer.observation import observable as observable_lib
from dm_control.locomotion.arenas import floors
from dm_control.locomotion.props import target_sphere
from dm_control.locomotion.tasks import reach

from tasks import base
from tasks.registry import register
from tasks.walkers.rat import CONTROL_TIMESTEP, PHYSICS_TIMESTEP

TOUCH_REWARD = 25.0
NUM_STATES = len(reach.TwoTouchState)


class FastTwoTouchTarget(target_sphere.TargetSphereTwoTouch):
    """TargetSphereTwoTouch without the per-substep scan; `TwoTouch` calls `touch()`."""

    after_substep = composer.Entity.after_substep

    def initialize_episode(self, physics, unused_random_state):
        # No contact scan here: contacts are stale until the episode's first step.
        self._geom_id = physics.model.name2id(self._geom.full_identifier, "geom")

    def touch(self, physics) -> None:
        """The stock activation logic for a paw contact observed now."""
        if self._touched_once and self._touched_twice:
            return
        if not self._touched_once:
            self._touched_once = True
            self._touch_time = physics.time()
            physics.bind(self._material).texid = physics.bind(self._texture_interval).element_id
        if self._touched_once and physics.time() > self._touch_time + self._touch_debounce:
            self._touched_twice = True
            physics.bind(self._material).texid = physics.bind(self._texture_final).element_id


class TwoTouch(reach.TwoTouch):
    """reach.TwoTouch with the fast touch check, seeded randomness and log metrics."""

    def __init__(self, walker, arena, **kwargs):
        super().__init__(walker=walker, arena=arena, **kwargs)
        self._task_observables["task_state"] = observable_lib.Generic(self._state_one_hot)
        self._task_observables["target"] = observable_lib.Generic(self._target_in_torso_frame)
        self._hand_ids = np.zeros(0, np.int64)
        self._trials = self._successes = 0

    # ---- observables ----

    def _state_one_hot(self, physics) -> np.ndarray:
        del physics
        out = np.zeros(NUM_STATES, np.float32)
        out[int(self._state_logic)] = 1.0
        return out

    def _target_in_torso_frame(self, physics) -> np.ndarray:
        if not self._targets:  # Observables are probed at compile, before the orb exists.
            return np.zeros(3, np.float32)
        torso = physics.bind(self._walker.root_body)
        delta = np.asarray(physics.bind(self._targets[0][0].geom).xpos) - np.asarray(torso.xpos)
        return (delta @ np.asarray(torso.xmat).reshape(3, 3)).astype(np.float32)

    @property
    def state_observable(self):
        return self._task_observables["task_state"]

    @property
    def target_observable(self):
        return self._task_observables["target"]

    # ---- episode logic ----

    def _respawn_walker(self, physics, random_state):
        self._walker.reinitialize_pose(physics, random_state)
        if self._randomize_spawn_position:
            self._spawn_position = self._arena.spawn_positions[random_state.randint(0, len(self._arena.spawn_positions))]
        quat = None
        if self._randomize_spawn_rotation:
            rotation = 2 * np.pi * random_state.uniform()
            quat = [np.cos(rotation / 2), 0, 0, np.sin(rotation / 2)]
        self._walker.shift_pose(
            physics, [self._spawn_position[0], self._spawn_position[1], 0.0], quat, rotate_velocity=True
        )

    def initialize_episode(self, physics, random_state):
        self._respawn_walker(physics, random_state)
        self._state_logic = reach.TwoTouchState.PRE_TOUCH
        self._discount = 1.0
        hands = list(self._lhand_geoms) + list(self._rhand_geoms)
        self._hand_ids = np.asarray(physics.bind(hands).element_id, np.int64).ravel()
        self._hand_geomids = set(int(i) for i in self._hand_ids)
        self._randomize_targets(physics, random_state)
        self._must_randomize_targets = False
        for target in itertools.chain(*self._targets):
            target._specific_collision_geom_ids = self._hand_geomids  # noqa: SLF001 - as the stock task
        self._target_ids = np.asarray(
            physics.bind([t.geom for t in itertools.chain(*self._targets)]).element_id, np.int64
        ).ravel()
        self._trials = self._successes = 0

    def before_step(self, physics, action, random_state):
        composer.Task.before_step(self, physics, action, random_state)
        if self._must_randomize_targets:
            self._randomize_targets(physics, random_state)
            self._must_randomize_targets = False

    def after_step(self, physics, random_state):
        super().after_step(physics, random_state)
        ncon = int(physics.data.ncon)
        if ncon == 0:
            return
        pairs = np.asarray(physics.data.contact.geom)[:ncon]
        paw_first = np.isin(pairs[:, 0], self._hand_ids)
        paw_second = np.isin(pairs[:, 1], self._hand_ids)
        touched = np.concatenate([pairs[paw_second, 0], pairs[paw_first, 1]])
        for target, geom_id in zip(itertools.chain(*self._targets), self._target_ids):
            if np.any(touched == geom_id):
                target.touch(physics)

    def get_reward(self, physics):
        before = self._state_logic
        reward = super().get_reward(physics)
        after = self._state_logic
        if before == reach.TwoTouchState.PRE_TOUCH and after == reach.TwoTouchState.TOUCHED_ONCE:
            self._trials += 1
        if before == reach.TwoTouchState.TOUCHED_ONCE and after == reach.TwoTouchState.TOUCHED_TWICE:
            self._successes += 1
        return reward

    def log_metrics(self, physics) -> dict[str, float]:
        paws = [physics.bind(self._lhand_body).xpos, physics.bind(self._rhand_body).xpos]
        target = np.asarray(physics.bind(self._targets[0][0].geom).xpos)
        return {
            "trials": float(self._trials),
            "successes": float(self._successes),
            "paw_distance": float(min(np.linalg.norm(np.asarray(p) - target) for p in paws)),
            "state": float(int(self._state_logic)),
        }


@register(
    "rodent_two_touch",
    "Rat taps an orb with a forepaw, waits 0.8 s and taps it again (25 reward per correct touch).",
    walker="rat",
)
def rodent_two_touch(config, seed: int) -> base.TaskBuild:
    walker = base.make_walker("rat", config)
    arena = floors.Floor(size=(10.0, 10.0), aesthetic="outdoor_natural")
    task = TwoTouch(
        walker=walker,
        arena=arena,
        target_builders=[functools.partial(FastTwoTouchTarget, radius=0.025)],
        randomize_spawn_rotation=True,
        target_type_rewards=[TOUCH_REWARD],
        shuffle_target_builders=False,
        target_area=(1.5, 1.5),
        physics_timestep=PHYSICS_TIMESTEP,
        control_timestep=CONTROL_TIMESTEP,
    )
    return base.build(
        task,
        walker,
        config,
        seed,
        task_obs={"task_state": task.state_observable, "target": task.target_observable},
        log_metrics=task.log_metrics,
    )

"""Maze forage: find and touch all target spheres in a random labmaze maze.

dm_control's design (`basic_rodent_2020.rodent_maze_forage`: an 11x11 random
maze with up to 4 rooms, 3 targets per room, 50 reward per target, 30 s) with
our walker, camera and keys, and one fix for its cost: the stock
`TargetSphere.after_substep` scans `physics.data.contact` in Python for every
target at each of the 20 physics substeps of a control step (~15 ms a step,
most of the env's time without rendering). Here the targets have no substep
hook; the task checks all targets once per control step against MuJoCo's
contact arrays with numpy. A touch that starts and ends between two control
steps (20 ms) is missed; at rodent speeds that needs a limb to cross a 10 cm
sphere in under 20 ms, which does not happen. Two more departures from the
stock task: maze layouts follow the env seed (labmaze's seed came from numpy's
global generator), and targets are not checked against the stale contacts of
the pre-spawn pose at episode start (which could start a target collected).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
from dm_control import composer
from dm_control.locomotion.arenas import labmaze_textures, mazes
from dm_control.locomotion.props import target_sphere
from dm_control.locomotion.tasks import random_goal_maze

from tasks import base
from tasks.registry import register
from tasks.walkers.mouse import SCALE as MOUSE_SCALE
from tasks.walkers.rat import CONTROL_TIMESTEP, PHYSICS_TIMESTEP

TARGET_REWARD = 50.0  # per target, as dm_control's rodent_maze_forage


class FastTargetSphere(target_sphere.TargetSphere):
    """A TargetSphere without the per-substep contact scan; `MazeForage` activates it.

    `after_substep` is composer's empty hook again, which the environment skips
    entirely (it only calls hooks with a body).
    """

    after_substep = composer.Entity.after_substep

    def initialize_episode(self, physics, unused_random_state):
        # The stock hook also scans contacts here, but they are stale: computed
        # before the task respawned the walker, so a target near the walker's
        # build pose would start the episode collected. The task checks instead.
        self._geom_id = physics.model.name2id(self._geom.full_identifier, "geom")

    def activate(self, physics) -> None:
        self._activated = True
        physics.bind(self.material).rgba[-1] = 0  # Hide it, as the stock target does.


class MazeForage(random_goal_maze.ManyGoalsMaze):
    """ManyGoalsMaze with the target check once per control step, vectorized.

    Collecting every target ends the episode as terminal (discount 0): nothing
    is left to earn, whereas dm_control reports discount 1 there.
    """

    def __init__(self, walker, maze_arena, target_builder, **kwargs):
        super().__init__(walker=walker, maze_arena=maze_arena, target_builder=target_builder, **kwargs)
        self._target_geom_ids = np.zeros(0, np.int64)
        self._walker_geom_ids = np.zeros(0, np.int64)

    @property
    def targets(self) -> list:
        return [t for group in self._active_targets for t in group]

    def initialize_episode(self, physics, random_state):
        super().initialize_episode(physics, random_state)
        targets = self.targets
        self._target_geom_ids = np.asarray(physics.bind([t.geom for t in targets]).element_id, np.int64).ravel()
        walker_geoms = self._walker.mjcf_model.find_all("geom")
        self._walker_geom_ids = np.asarray(physics.bind(walker_geoms).element_id, np.int64).ravel()

    @property
    def collected(self) -> int:
        return sum(bool(t.activated) for t in self.targets)

    def after_step(self, physics, random_state):
        super().after_step(physics, random_state)
        self.update_targets(physics)

    def update_targets(self, physics) -> None:
        """Activates every target that a walker geom touches now (one numpy pass)."""
        ncon = int(physics.data.ncon)
        if ncon == 0 or not len(self._target_geom_ids):
            return
        pairs = np.asarray(physics.data.contact.geom)[:ncon]  # [ncon, 2] geom ids
        first_is_walker = np.isin(pairs[:, 0], self._walker_geom_ids)
        second_is_walker = np.isin(pairs[:, 1], self._walker_geom_ids)
        touching = np.concatenate([pairs[second_is_walker, 0], pairs[first_is_walker, 1]])
        if not len(touching):
            return
        hit = np.flatnonzero(np.isin(self._target_geom_ids, touching))
        if len(hit):
            targets = self.targets
            for index in hit:
                if not targets[index].activated:
                    targets[index].activate(physics)

    def get_discount(self, physics):
        if len(self._target_geom_ids) and self.collected == len(self._target_geom_ids):
            return 0.0
        return super().get_discount(physics)

    def log_metrics(self, physics) -> dict[str, float]:
        collected = self.collected
        total = max(1, len(self._target_geom_ids))
        return {
            "targets_collected": float(collected),
            "targets_fraction": collected / total,
            "targets_total": float(len(self._target_geom_ids)),
        }


def build_maze_forage(walker_name: str, config, seed: int, scale: float = 1.0) -> base.TaskBuild:
    """dm_control's rodent maze forage with `walker_name`, lengths times `scale`.

    The mouse is the rat scaled by MOUSE_SCALE; its maze, targets and target
    heights are scaled alike so that the task asks the same of it.
    """
    walker = base.make_walker(walker_name, config)
    with _global_numpy_seed(seed):  # labmaze's seed, hence every maze layout, follows the env seed
        arena = mazes.RandomMazeWithTargets(
            x_cells=11,
            y_cells=11,
            xy_scale=0.5 * scale,
            z_height=0.3 * scale,
            max_rooms=4,
            room_min_size=4,
            room_max_size=5,
            spawns_per_room=1,
            targets_per_room=3,
            wall_textures=labmaze_textures.WallTextures(style="style_01"),
            aesthetic="outdoor_natural",
        )
    task = MazeForage(
        walker=walker,
        maze_arena=arena,
        target_builder=functools.partial(
            FastTargetSphere,
            radius=0.05 * scale,
            height_above_ground=0.125 * scale,
            rgb1=(0, 0, 0.4),
            rgb2=(0, 0, 0.7),
        ),
        target_reward_scale=TARGET_REWARD,
        contact_termination=False,
        physics_timestep=PHYSICS_TIMESTEP,
        control_timestep=CONTROL_TIMESTEP,
    )
    return base.build(task, walker, config, seed, log_metrics=task.log_metrics)


@contextlib.contextmanager
def _global_numpy_seed(seed: int):
    """Seeds numpy's global generator for a block, then restores it.

    RandomMazeWithTargets draws labmaze's seed from the global generator, so the
    stock task's mazes did not follow the env's seed.
    """
    state = np.random.get_state()
    np.random.seed(int(seed) % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


@register(
    "rodent_maze_forage",
    "Rat in a random labmaze maze: touch every target sphere (3 per room, up to 12; 50 reward each).",
    walker="rat",
)
def rodent_maze_forage(config, seed: int) -> base.TaskBuild:
    return build_maze_forage("rat", config, seed)


@register(
    "mouse_maze_forage",
    "Mouse in a random maze scaled to its size: touch every target sphere (up to 12; 50 reward each).",
    walker="mouse",
)
def mouse_maze_forage(config, seed: int) -> base.TaskBuild:
    return build_maze_forage("mouse", config, seed, scale=MOUSE_SCALE)

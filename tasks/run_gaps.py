"""Run gaps: run down a corridor of platforms separated by gaps, at 1 m/s.

dm_control's `basic_rodent_2020.rodent_run_gaps` (platforms 0.4-0.8 m, gaps
0.05-0.2 m, a 2 m wide and 40 m long corridor, reward = closeness of the forward
velocity to 1 m/s, falling below -0.3 m ends the episode as terminal) with our
walker, camera and keys. The stock task has no task observable: the gaps are
seen through the camera, so the `task` key group adds nothing here.
"""

from __future__ import annotations

from dm_control.composer.variation import distributions
from dm_control.locomotion.arenas import corridors as corridor_arenas
from dm_control.locomotion.tasks import corridors as corridor_tasks

from tasks import base
from tasks.registry import register
from tasks.walkers.rat import CONTROL_TIMESTEP, PHYSICS_TIMESTEP

TARGET_VELOCITY = 1.0  # m/s
SPAWN_POSITION = (5.0, 0.0, 0.0)


class RunGaps(corridor_tasks.RunThroughCorridor):
    """RunThroughCorridor with log metrics (distance run, forward velocity, fell)."""

    def initialize_episode(self, physics, random_state):
        super().initialize_episode(physics, random_state)
        self._start_x = float(physics.bind(self._walker.root_body).xpos[0])

    def log_metrics(self, physics) -> dict[str, float]:
        root = physics.bind(self._walker.root_body)
        return {
            "distance": float(root.xpos[0]) - self._start_x,
            "forward_velocity": float(root.subtree_linvel[0]),
            "fell": float(self._failure_termination),
        }


@register(
    "rodent_run_gaps",
    "Rat runs down a corridor of platforms and gaps; reward for forward speed near 1 m/s, falling ends it.",
    walker="rat",
)
def rodent_run_gaps(config, seed: int) -> base.TaskBuild:
    walker = base.make_walker("rat", config)
    arena = corridor_arenas.GapsCorridor(
        platform_length=distributions.Uniform(0.4, 0.8),
        gap_length=distributions.Uniform(0.05, 0.2),
        corridor_width=2,
        corridor_length=40,
        aesthetic="outdoor_natural",
    )
    task = RunGaps(
        walker=walker,
        arena=arena,
        walker_spawn_position=SPAWN_POSITION,
        walker_spawn_rotation=0,
        target_velocity=TARGET_VELOCITY,
        contact_termination=False,
        terminate_at_height=-0.3,
        physics_timestep=PHYSICS_TIMESTEP,
        control_timestep=CONTROL_TIMESTEP,
    )
    return base.build(task, walker, config, seed, log_metrics=task.log_metrics)

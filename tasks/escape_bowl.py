"""Escape bowl: climb out of a bumpy bowl-shaped terrain.

dm_control's `basic_rodent_2020.rodent_escape_bowl` (a 20 m bowl heightfield
regenerated each episode, reward = uprightness x distance of the head from the
centre) with our walker, camera and keys. The episode lasts `env.time_limit`
(dm_control used 20 s; set `--env.time_limit 20` to match it). The agent's task key `origin`
is the stock observable: the world origin in the torso frame.
"""

from __future__ import annotations

import numpy as np
from dm_control.locomotion.arenas import bowl
from dm_control.locomotion.tasks import escape

from tasks import base
from tasks.registry import register
from tasks.walkers.rat import CONTROL_TIMESTEP, PHYSICS_TIMESTEP

ARENA_SIZE = (20.0, 20.0)


class EscapeBowl(escape.Escape):
    """dm_control's Escape with log metrics (head distance, escaped, upright)."""

    def log_metrics(self, physics) -> dict[str, float]:
        head = np.asarray(physics.named.data.site_xpos[self._reward_body])
        radius = float(physics.model.hfield_size[escape._HEIGHTFIELD_ID, 0])  # noqa: SLF001
        distance = float(np.linalg.norm(head[:2]))
        return {
            "head_distance": distance,
            "escaped": float(distance >= radius),
            "upright": float(physics.bind(self._walker.root_body).xmat[8]),
        }


@register(
    "rodent_escape_bowl",
    "Rat in a bumpy bowl: climb out (reward grows with head distance from the centre while upright).",
    walker="rat",
)
def rodent_escape_bowl(config, seed: int) -> base.TaskBuild:
    walker = base.make_walker("rat", config)
    arena = bowl.Bowl(size=ARENA_SIZE, aesthetic="outdoor_natural")
    task = EscapeBowl(
        walker=walker,
        arena=arena,
        physics_timestep=PHYSICS_TIMESTEP,
        control_timestep=CONTROL_TIMESTEP,
    )
    return base.build(
        task,
        walker,
        config,
        seed,
        task_obs={"origin": walker.observables.get_observable("origin")},
        log_metrics=task.log_metrics,
    )


"""Rodent tasks and walkers as dm_control composer tasks, registered by name."""

import dreamer_rodent  # noqa: F401  (sets MUJOCO_GL before dm_control is imported)

from tasks.registry import entries, get, names, register  # noqa: F401

"""The task registry: a name, a factory and a one-line description per task.

A task module in this package registers itself with `@register(...)`; every
module in `tasks/` is imported on first lookup, so adding a task is one file.
A registration may name the configs.yaml preset that `--task NAME` applies first
(`preset`), for a family of tasks that share defaults (the dm_control suite's
`dmc_proprio`), and mark a task as a benchmark, listed apart from the rodent tasks.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from typing import Callable

_REGISTRY: dict[str, "TaskEntry"] = {}
_DISCOVERED = False


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    name: str
    factory: Callable
    description: str
    walker: str
    preset: str | None = None  # configs.yaml preset that `--task NAME` applies first (None: the one named NAME, if any)
    benchmark: bool = False  # a reference task (dm_control suite) to compare the agent with published scores


class UnknownTaskError(KeyError):
    def __str__(self):
        return self.args[0]


class TaskConfigError(ValueError):
    """A task or walker setting that cannot be used; the message says the fix.

    Defined here, beside UnknownTaskError, so that the command lines can catch it
    without importing dm_control; tasks raise it as `base.TaskConfigError`.
    """


def register(name: str, description: str, walker: str, preset: str | None = None, benchmark: bool = False):
    """Decorator: registers `factory` under `name` (names are unique)."""

    def decorate(factory):
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"task '{name}' is registered twice ({_REGISTRY[name].factory} and {factory}).")
        _REGISTRY[name] = TaskEntry(name, factory, description, walker, preset, benchmark)
        return factory

    return decorate


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import tasks

    for module in pkgutil.iter_modules(tasks.__path__):
        if not module.name.startswith("_") and module.name != "registry":
            importlib.import_module(f"tasks.{module.name}")
    _DISCOVERED = True


def entries() -> dict[str, TaskEntry]:
    _discover()
    return dict(sorted(_REGISTRY.items()))


def names() -> list[str]:
    return list(entries())


def get(name: str) -> TaskEntry:
    known = entries()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownTaskError(f"unknown task '{name}'.{hint} Known tasks: {', '.join(known)}.")
    return known[name]

"""The task registry: a name, a factory and a one-line description per task.

A task module in this package registers itself with `@register(...)`; every
module in `tasks/` is imported on first lookup, so adding a task is one file.
A registration may name the configs.yaml preset that `--task NAME` applies first
(`preset`), for a family of tasks that share defaults (the dm_control suite's
`dmc_proprio`), and mark a task as a benchmark, listed apart from the rodent tasks.

One bad task file never takes the others down: a module that fails to import is
recorded with its error (its tasks are missing), and a name that two modules
register is refused by both (it is ambiguous) while their other tasks stay
usable. `problems()` has one line per bad file; `get()` of a name those files
would have had names the file and its error.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import os
import pkgutil
import re
import sys
import traceback
from typing import Callable

_REGISTRY: dict[str, "TaskEntry"] = {}
_DUPLICATES: dict[str, list["TaskEntry"]] = {}  # name -> the registrations after the first (other modules)
_FAILED: dict[str, "TaskFileProblem"] = {}  # module name -> why it did not import
_DISCOVERED = False
_DISCOVERING = False


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    name: str
    factory: Callable
    description: str
    walker: str
    preset: str | None = None  # configs.yaml preset that `--task NAME` applies first (None: the one named NAME, if any)
    benchmark: bool = False  # a reference task (dm_control suite) to compare the agent with published scores
    # The task's own settings, (name, default, one-line doc) each: `--task_kwargs.NAME` is checked against them
    # and `train --task NAME --help` lists them. Empty: the task reads configs.yaml's shared task_kwargs.
    settings: tuple = ()


@dataclasses.dataclass(frozen=True)
class TaskFileProblem:
    """A task module that failed to import: its file, the error in one line, the task names its source registers."""

    module: str
    file: str
    error: str
    names: tuple[str, ...] = ()

    @property
    def line(self) -> str:
        return f"{_shown(self.file)}: {self.error}"


class UnknownTaskError(KeyError):
    def __str__(self):
        return self.args[0]


class DuplicateTaskError(UnknownTaskError):
    """A task name that two modules register: neither is used until one is renamed."""


class TaskConfigError(ValueError):
    """A task or walker setting that cannot be used; the message says the fix.

    Defined here, beside UnknownTaskError, so that the command lines can catch it
    without importing dm_control; tasks raise it as `base.TaskConfigError`.
    """


def register(name: str, description: str, walker: str, preset: str | None = None, benchmark: bool = False,
             settings=None):
    """Decorator: registers `factory` under `name` (names are unique: a second module's is recorded as a clash).

    `settings` maps each of the task's own settings to `(default, "one-line doc")`; the factory reads them from
    `config.task_kwargs` (where the defaults are filled in)."""
    declared = tuple((str(k), v[0], str(v[1])) for k, v in (settings or {}).items())

    def decorate(factory):
        entry = TaskEntry(name, factory, description, walker, preset, benchmark, declared)
        old = _REGISTRY.get(name)
        if old is None or _same_factory(old.factory, factory):
            _REGISTRY[name] = entry  # new, or the same function again (a module imported twice)
        else:
            _DUPLICATES.setdefault(name, []).append(entry)
        return factory

    return decorate


def _same_factory(a, b) -> bool:
    """The same function, or the same function of the same file imported again (under another module name)."""
    return a is b or (_file_of(a), getattr(a, "__qualname__", None)) == (_file_of(b), getattr(b, "__qualname__", 0))


def _module_of(factory) -> str:
    return getattr(factory, "__module__", None) or "?"


def _file_of(factory) -> str:
    code = getattr(factory, "__code__", None)
    if code is not None:
        return code.co_filename
    return getattr(sys.modules.get(_module_of(factory)), "__file__", None) or "?"


def _shown(path: str) -> str:
    """`path` relative to the working directory when it lies below it, else as it is."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def _where(factory) -> str:
    return f"{_module_of(factory)} ({_shown(_file_of(factory))})"


def _one_line(error: BaseException, file: str) -> str:
    """`line N: Type: message` with N the line of `file` the error came from (the import line for a missing module)."""
    if isinstance(error, SyntaxError) and error.lineno is not None:
        return f"line {error.lineno}: {type(error).__name__}: {error.msg}"
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(file):
            line = frame.lineno
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if len(text) > 300:
        text = text[:297] + "..."
    what = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return f"line {line}: {what}" if line is not None else what


_REGISTER_CALL = re.compile(r"register\(\s*(?:name\s*=\s*)?[\"']([^\"']+)[\"']")


def _names_in_source(file: str) -> tuple[str, ...]:
    """The task names a module registers with literal names (read from its text: it may not even parse)."""
    try:
        with open(file, encoding="utf-8", errors="replace") as f:
            return tuple(sorted(set(_REGISTER_CALL.findall(f.read()))))
    except OSError:
        return ()


def _discover() -> None:
    global _DISCOVERED, _DISCOVERING
    if _DISCOVERED or _DISCOVERING:
        return
    import tasks

    _DISCOVERING = True
    try:
        for module in pkgutil.iter_modules(tasks.__path__):
            if module.name.startswith("_") or module.name == "registry":
                continue
            name = f"tasks.{module.name}"
            try:
                importlib.import_module(name)
            except (Exception, SystemExit) as error:  # noqa: BLE001 - one bad file must not hide the others
                file = _module_file(module)
                _FAILED[name] = TaskFileProblem(name, file, _one_line(error, file), _names_in_source(file))
                _forget(name)
        for point in _entry_points():  # pip-installed packages of a lab's own tasks
            try:
                point.load()
            except (Exception, SystemExit) as error:  # noqa: BLE001 - same as a bad file in tasks/
                file = _spec_file(point.module) or point.value
                _FAILED[point.module] = TaskFileProblem(point.module, file, _one_line(error, file),
                                                        _names_in_source(file))
                _forget(point.module)
    finally:
        _DISCOVERING = False
    _DISCOVERED = True


ENTRY_POINT_GROUP = "dreamer_rodent.tasks"


def _entry_points():
    from importlib import metadata

    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name)


def _spec_file(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


_LOADED_MODULES: dict[str, str] = {}  # --task_module as given -> the module it imported


def _is_file(name: str) -> bool:
    """A `--task_module` that names a file (`x.py`, `dir/x`) rather than a dotted module path."""
    return name.endswith(".py") or os.sep in name


def module_path(name: str) -> str:
    """`--task_module` as it is stored: a file made absolute, a dotted module path as given."""
    return os.path.abspath(os.path.expanduser(name)) if _is_file(name) else name


def load_module(name: str) -> None:
    """Imports `--task_module`: a dotted module path (`my_lab.tasks.climb`) or a `.py` file; its @register calls
    add its tasks. Importing it again is a no-op; one that fails is a TaskConfigError naming it and its error."""
    if not name:
        return
    key = module_path(name)  # a relative and an absolute path of one file: loaded once
    is_file = _is_file(name)
    if key in _LOADED_MODULES:
        return
    _discover()  # the built-in tasks first, so that a clash names the plugin as the second registrant
    file = None
    module = name
    try:
        if is_file:
            file = key
            if not os.path.isfile(file):
                raise FileNotFoundError(f"no such file: {file}")
            module = "task_module_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(file))[0])
            spec = importlib.util.spec_from_file_location(module, file)
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[module] = loaded
            spec.loader.exec_module(loaded)
        else:
            file = _spec_file(name)
            importlib.import_module(name)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - reported as one line
        _forget(module)  # what it registered before failing, and the half-run module
        sys.modules.pop(module, None)
        raise TaskConfigError(f"--task_module {name} failed to import: {_one_line(error, file or name)}. Fix it, "
                              "or pass a dotted module path on sys.path or a .py file.") from None
    _LOADED_MODULES[key] = module


def _module_file(module: pkgutil.ModuleInfo) -> str:
    path = os.path.join(module.module_finder.path, module.name)
    return os.path.join(path, "__init__.py") if module.ispkg else path + ".py"


def _forget(module: str) -> None:
    """Drops what a module that failed half-way registered (its factories may need what never ran)."""
    for name in [n for n, e in _REGISTRY.items() if _module_of(e.factory) == module]:
        del _REGISTRY[name]
        later = _DUPLICATES.pop(name, [])
        if later:  # the next registrant takes the name over
            _REGISTRY[name] = later[0]
            if later[1:]:
                _DUPLICATES[name] = later[1:]
    for name in list(_DUPLICATES):
        _DUPLICATES[name] = [e for e in _DUPLICATES[name] if _module_of(e.factory) != module]
        if not _DUPLICATES[name]:
            del _DUPLICATES[name]


def entries() -> dict[str, TaskEntry]:
    """The usable tasks by name (a name two modules register is left out: see problems())."""
    _discover()
    return dict(sorted((n, e) for n, e in _REGISTRY.items() if n not in _DUPLICATES))


def names() -> list[str]:
    return list(entries())


def _duplicate_message(name: str) -> str:
    first, later = _REGISTRY[name], _DUPLICATES[name]
    others = " and ".join(_where(e.factory) for e in later)
    return (f"task '{name}' is registered twice: by {_where(first.factory)} and by {others}. Task names must be "
            f"unique: rename the task in one of these files (the first argument of its @register(...)), or remove "
            f"the copy you do not want.")


def problems() -> list[str]:
    """One line per bad task file: one that failed to import (file: error), or one that registers a name another
    module registered first."""
    _discover()
    lines = [p.line for p in _FAILED.values()]
    clashes: dict[tuple[str, str], list[str]] = {}
    for name in sorted(_DUPLICATES):
        for entry in _DUPLICATES[name]:
            clashes.setdefault((_file_of(entry.factory), _where(_REGISTRY[name].factory)), []).append(name)
    for (file, first), clashing in clashes.items():
        what = f"task '{clashing[0]}' is" if len(clashing) == 1 else "tasks " + ", ".join(f"'{n}'" for n in clashing) + " are"
        lines.append(f"{_shown(file)}: {what} also registered by {first}; names must be unique, so neither is "
                     f"usable: rename one (the first argument of @register(...)) or remove the copy.")
    return lines


def get(name: str) -> TaskEntry:
    known = entries()
    if name in _DUPLICATES:
        raise DuplicateTaskError(_duplicate_message(name))
    if name not in known:
        owners = [p for p in _FAILED.values() if name in p.names]
        if owners:
            raise UnknownTaskError(
                f"task '{name}' is defined in {_shown(owners[0].file)}, which failed to import: {owners[0].error}. "
                "Fix that file (python -m dreamer_rodent.tasks lists every task file that fails to load).")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        message = f"unknown task '{name}'.{hint} Known tasks: {', '.join(known)}."
        if _FAILED:
            message += (" These task files failed to import, so their tasks are missing: "
                        + "; ".join(p.line for p in _FAILED.values()) + ". Fix them if the task is in one.")
        raise UnknownTaskError(message)
    return known[name]

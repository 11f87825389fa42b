"""Configuration: `configs.yaml` presets stacked over `defaults`, then dotted flags.

Every entry point resolves its config here, so a key means the same thing in
training, evaluation and benchmarks. Errors name the offending key and the
closest known one, because a typo that silently does nothing costs a night of GPU
time.
"""

from __future__ import annotations

import difflib
import io
import os
import pathlib
from typing import Any, Iterable, Mapping

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

# The presets live at the repository root (the project is installed editable, as
# the README and Dockerfile do); DREAMER_RODENT_CONFIGS points elsewhere.
CONFIGS_PATH = pathlib.Path(
    os.environ.get("DREAMER_RODENT_CONFIGS", pathlib.Path(__file__).resolve().parent.parent / "configs.yaml")
)


class ConfigError(ValueError):
    """A config key, preset or value that cannot be used, with the fix in the message."""


class Config:
    """An immutable nested mapping with attribute access (`config.run.steps`).

    Not a `collections.abc.Mapping`: its `keys` method would shadow the config
    key `env.keys`. Use `to_dict()`, `items()` or iteration instead.
    """

    def __init__(self, data: "Mapping[str, Any] | Config | None" = None, **kwargs):
        merged = data.to_dict() if isinstance(data, Config) else dict(data or {})
        merged.update(kwargs)
        self._data = {k: Config(v) if isinstance(v, Mapping) else _freeze(v) for k, v in merged.items()}

    def __getitem__(self, key):
        if "." in key:
            node = self
            for part in key.split("."):
                node = node[part]
            return node
        return self._data[key]

    def __getattr__(self, key):
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(f"config has no key '{key}'") from None

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def items(self):
        return self._data.items()

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __contains__(self, key):
        try:
            self[key]
            return True
        except (KeyError, TypeError):
            return False

    def __repr__(self):
        return f"Config({self.to_dict()!r})"

    def __eq__(self, other):
        if isinstance(other, Config):
            return self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == _plain(other)
        return NotImplemented

    def __hash__(self):
        return hash(yaml_dump(self.to_dict()))

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else _thaw(v) for k, v in self._data.items()}

    def flat(self) -> dict:
        """Dotted keys to leaf values (`{'run.steps': 1000, ...}`)."""
        return dict(_flatten(self.to_dict()))

    def update(self, updates: Mapping[str, Any]) -> "Config":
        """Returns a new config with dotted or nested keys replaced; unknown keys fail."""
        data = self.to_dict()
        for key, value in _flatten(updates, allow_leaf_dicts=False):
            _set_checked(data, key, value, source="update")
        return Config(data)

    def save(self, path) -> None:
        path = pathlib.Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml_dump(self.to_dict()))
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> "Config":
        return cls(yaml_load(pathlib.Path(path).read_text(), source=path))


def _freeze(value):
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value):
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def yaml_load(text: str, source=None):
    """Parses YAML; with `source` (the file it came from), a syntax error is a ConfigError naming the place."""
    yaml = YAML(typ="safe", pure=True)
    try:
        return _plain(yaml.load(text))
    except YAMLError as error:
        if source is None:
            raise
        raise ConfigError(f"{source}{_yaml_where(error, text)}: not valid YAML: {_yaml_problem(error)}.") from None


def _yaml_where(error: YAMLError, text: str) -> str:
    """` line L, column C ("the line")` of a YAML error (1-based), or ''."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if mark is None:
        return ""
    lines = text.splitlines()
    shown = lines[mark.line].strip() if 0 <= mark.line < len(lines) else ""
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f" line {mark.line + 1}, column {mark.column + 1}" + (f" ({shown!r})" if shown else "")


def _yaml_problem(error: YAMLError) -> str:
    if isinstance(error, MarkedYAMLError):
        problem = (error.problem or "").strip()
        context = (error.context or "").strip()
        if context and error.context_mark is not None and error.context_mark is not error.problem_mark:
            context += f" that starts at line {error.context_mark.line + 1}, column {error.context_mark.column + 1}"
        return "; ".join(x for x in (problem, context) if x) or type(error).__name__
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def yaml_dump(data) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    stream = io.StringIO()
    yaml.dump(_plain(data), stream)
    return stream.getvalue()


def _plain(value):
    """Converts ruamel containers and tuples to plain dicts and lists."""
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flatten(tree, prefix: str = "", allow_leaf_dicts: bool = False):
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, (Mapping, Config)) and len(value):
            yield from _flatten(value, full + ".", allow_leaf_dicts)
        else:
            yield full, value


def _closest(key: str, known: Iterable[str]) -> str:
    known = list(known)
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.0)
    if not match:
        return ""
    # Prefer a key that shares the last component (`--steps` -> `run.steps`).
    tail = key.split(".")[-1]
    same_tail = [k for k in known if k.split(".")[-1] == tail]
    if same_tail:
        match = difflib.get_close_matches(key, same_tail, n=1, cutoff=0.0) or same_tail[:1]
    return f" Did you mean '{match[0]}'?"


def _type_name(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if value is None:
        return "null"
    return type(value).__name__


def _coerce(key: str, old, new):
    """Converts `new` to the type of the default `old`; strings come from the command line."""
    if old is None or new is None:
        return new
    expected = _type_name(old)
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
        if isinstance(new, str) and new.lower() in ("true", "false", "1", "0", "yes", "no"):
            return new.lower() in ("true", "1", "yes")
    elif isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
        if isinstance(new, float) and new.is_integer():
            return int(new)
        if isinstance(new, str):
            try:
                number = float(new.replace("_", ""))
                if number.is_integer():
                    return int(number)
            except ValueError:
                pass
    elif isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
        if isinstance(new, str):
            try:
                return float(new)
            except ValueError:
                pass
    elif isinstance(old, str):
        if isinstance(new, str):
            return new
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return str(new)
    elif isinstance(old, (list, tuple)):
        if isinstance(new, (list, tuple)):
            items = list(new)
        elif isinstance(new, str):
            text = new.strip()
            if text.startswith("["):
                try:
                    items = yaml_load(text) or []
                except YAMLError as error:
                    raise ConfigError(
                        f"config key '{key}' expects a list (default {old!r}); {new!r} is not a valid YAML list "
                        f"({_yaml_problem(error)}). Write it as a,b,c or [a, b, c]."
                    ) from None
                if not isinstance(items, list):
                    items = None
            else:
                items = [x for x in text.split(",") if x] if text else []
        else:
            items = None
        if items is not None:
            if old:
                items = [_coerce(key, old[0], x) for x in items]
            return list(items)
    raise ConfigError(
        f"config key '{key}' expects a value of type {expected} (default {old!r}), got {new!r}."
    )


def _set_checked(data: dict, key: str, value, source: str) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = [k for k, _ in _flatten(data)]
            raise ConfigError(f"unknown config key '{key}' (from {source}).{_closest(key, known)}")
        if i == len(parts) - 1:
            old = node[part]
            if isinstance(old, dict) and old:
                if not isinstance(value, (Mapping, Config)):
                    raise ConfigError(f"config key '{key}' is a group; set one of its keys: {', '.join(sorted(old))}.")
                for sub, subvalue in _flatten(value):
                    _set_checked(data, f"{key}.{sub}", subvalue, source)
            else:
                node[part] = _coerce(key, old, value)
        else:
            node = node[part]


def load_presets(path=CONFIGS_PATH) -> dict:
    """configs.yaml's blocks by name; a missing, unreadable or malformed file is a ConfigError saying where."""
    fix = _configs_fix(path)
    try:
        text = pathlib.Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"the config file {path} does not exist. Point DREAMER_RODENT_CONFIGS at a configs.yaml, or "
                          "reinstall the project editable from its repository (pip install -e .).") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the config file {path} ({error}). {fix}") from None
    try:
        presets = yaml_load(text, source=path)
    except ConfigError as error:
        raise ConfigError(f"{error} {fix}") from None
    if not isinstance(presets, dict) or not isinstance(presets.get("defaults"), dict):
        raise ConfigError(f"{path} has no 'defaults' block (a mapping of every config key). {fix}")
    return presets


def _configs_fix(path) -> str:
    path = pathlib.Path(path)
    if (path.resolve().parent / ".git").exists():
        return (f"Fix the file (`git diff {path.name}` in {path.resolve().parent} shows local edits, `git checkout "
                f"{path.name}` restores it), or point DREAMER_RODENT_CONFIGS at a valid configs.yaml.")
    return "Fix the file, or point DREAMER_RODENT_CONFIGS at a valid configs.yaml."


def build_config(presets_names: Iterable[str] = (), flags: Mapping[str, Any] | None = None, path=CONFIGS_PATH) -> Config:
    """`defaults`, the chosen task's declared settings, then each named preset in order, then flag values."""
    presets = load_presets(path)
    data = presets["defaults"]
    names = list(presets_names)
    for name in names:
        if name not in presets or name == "defaults":
            known = sorted(k for k in presets if k != "defaults")
            raise ConfigError(
                f"unknown config preset '{name}'.{_closest(name, known)} Known presets: {', '.join(known)}."
            )
    flags = dict(flags or {})
    task = flags.get("task", next((presets[n]["task"] for n in reversed(names) if "task" in presets[n]),
                                  data.get("task")))
    declared = _declared_settings(task)
    for setting, default, _ in declared:  # a task with its own settings: their defaults, under presets and flags
        data.setdefault("task_kwargs", {})[setting] = default
    for name in names:
        for key, value in _flatten(presets[name]):
            _set_checked(data, key, value, source=f"preset '{name}'")
    own = [n for n, _, _ in declared]
    for key, value in flags.items():
        if own and key.startswith("task_kwargs.") and key.split(".")[1] not in own:
            setting = key.split(".")[1]
            raise ConfigError(
                f"task '{task}' has no setting '{setting}' (from flag --{key}).{_closest(setting, own)} Its "
                "settings: " + "; ".join(f"{n} (default {d!r}): {doc}" for n, d, doc in declared) + ".")
        _set_checked(data, key, value, source=f"flag --{key}")
    return Config(data)


def _declared_settings(task) -> tuple:
    """The settings `task` declares in its registration, or () (built-in tasks share configs.yaml's task_kwargs)."""
    if not isinstance(task, str) or not task:
        return ()
    from tasks import registry

    try:
        return tuple(registry.get(task).settings)
    except registry.UnknownTaskError:
        return ()


def split_flags(argv: Iterable[str], extra_flags: Mapping[str, Any] | None = None) -> tuple[list[str], dict, dict]:
    """Tokenizes `--configs a b --key.sub value ... --flag` without resolving keys.

    Returns the preset names, the dotted config flags (values as strings or lists
    of strings) and the `extra_flags` (non-config flags such as eval's
    `--checkpoint`, with their defaults) as given. A value may be a negative
    number; a bare `--flag` means true.
    """
    argv = list(argv)
    extra = dict(extra_flags or {})
    names: list[str] = []
    flags: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument '{arg}': flags look like --key value.")
        key, eq, inline = arg[2:].partition("=")
        values = [inline] if eq else []
        i += 1
        while not eq and i < len(argv) and not (argv[i].startswith("--") and len(argv[i]) > 2 and not _is_number(argv[i])):
            values.append(argv[i])
            i += 1
        if key == "configs":
            names.extend(v for value in values for v in value.split(",") if v)
            continue
        if key in extra:
            if isinstance(extra[key], bool) and not values:
                extra[key] = True
            elif len(values) == 1:
                extra[key] = values[0]
            else:
                extra[key] = values
            continue
        if not values:
            flags[key] = "true"  # a bare --flag sets a boolean key; other types fail in _coerce
        elif len(values) == 1:
            flags[key] = values[0]
        else:
            flags[key] = values
    return names, flags, extra


def parse_args(argv: Iterable[str], extra_flags: Mapping[str, Any] | None = None) -> tuple[Config, dict]:
    """Parses `--configs a b --key.sub value ...` into a config.

    `extra_flags` names flags that are not config keys (with their defaults), such
    as eval's `--checkpoint`; they are returned separately.
    """
    names, flags, extra = split_flags(argv, extra_flags)
    return build_task_config(names, flags), extra


def build_task_config(names: Iterable[str], flags: Mapping[str, Any]) -> Config:
    """`build_config` as the command line does it: `--task_module` loaded, then the task's own preset first."""
    names = list(names)
    if flags.get("task_module"):  # its tasks (and the presets they name) must be known before the task's preset
        from tasks import registry

        registry.load_module(str(flags["task_module"]))
    return build_config(task_preset(flags.get("task"), names) + names, flags)


def with_defaults(config: Config) -> Config:
    """A saved config over today's defaults, so that a run from an older version has every key (a key added since
    takes its default, which keeps the old behaviour)."""
    from tasks import registry

    module = str(config.get("task_module", "") or "")
    registry.load_module(module)  # a plugin task: its declared settings are among the defaults
    defaults = build_config([], {"task": config.task, "task_module": module})
    known = defaults.flat()
    saved = {k: v for k, v in config.flat().items() if k in known and not isinstance(v, dict)}
    return defaults.update(saved)


# Keys that set the model's size: a preset or flag that sets one of them keeps the CPU preset away.
MODEL_SIZE_PREFIXES = ("agent.rssm.", "agent.units", "agent.depth", "agent.vestibular_units", "agent.proprio_units",
                       "agent.task_units", "agent.cnn_mults", "agent.enc_layers", "agent.dec_layers",
                       "agent.head_layers", "agent.ac_layers")


def _sizes(key: str) -> bool:
    return key.startswith(MODEL_SIZE_PREFIXES)


def sizes_model(names: Iterable[str], flags: Mapping[str, Any], path=CONFIGS_PATH) -> bool:
    """Whether a preset in `names` (the task's own included) or a flag sets the model's size."""
    presets = load_presets(path)
    if any(_sizes(key) for key in flags):
        return True
    for name in names:
        preset = presets.get(name)
        if isinstance(preset, Mapping) and any(_sizes(key) for key, _ in _flatten(preset)):
            return True
    return False


def with_cpu_preset(argv: Iterable[str], config: Config, platform: str) -> tuple[Config, str | None]:
    """On a CPU, the command line's config with `jax.cpu_preset` under the user's presets when nothing sizes the model.

    The defaults are the paper's GPU-sized model (15M parameters with the camera): on a CPU its first update takes
    minutes and every later one a minute. A run that names no model size (no preset, the task's own included, and
    no flag sets a key of MODEL_SIZE_PREFIXES) gets the CPU preset, stacked after the task's preset and before the
    user's presets and flags; the returned note says so and what else the preset sets. Returns (config, None) where
    nothing changes."""
    preset = str(config.jax.cpu_preset or "")
    if platform != "cpu" or not preset:
        return config, None
    names, flags, _ = split_flags(argv)
    if sizes_model(task_preset(flags.get("task"), names) + names, flags):
        return config, None
    before = config.flat()  # `config` is the command line's own (parse_args of argv)
    config = build_task_config([preset] + names, flags)
    camera = any(str(k) == "image" for k in config.env.keys)
    speed = (" With the camera each update still takes seconds on a CPU; add --configs proprio_only for the run "
             "that learns within an hour (README)." if camera else "")
    changed = sorted(k for k, v in config.flat().items() if before.get(k) != v and not _sizes(k))
    also = f" It also sets {', '.join(f'{k}={config[k]!r}' for k in changed)}." if changed else ""
    return config, (f"on the CPU with no model size given, the '{preset}' preset (jax.cpu_preset) sizes the model, "
                    f"so that training starts within minutes.{also}{speed} For the paper's GPU-sized model on a "
                    f"CPU, pass --jax.cpu_preset '' (or a size preset such as --configs size12m).")


def task_preset(task, names: Iterable[str], path=CONFIGS_PATH) -> list[str]:
    """`[task]` when configs.yaml has task defaults for `--task NAME` (a preset of that name that sets
    `task: NAME`, e.g. mouse_goto's mouse-sized success radius) and `--configs` does not list it already;
    they go first, so other presets and flags still override them. Without this, `--task mouse_goto`
    trained the mouse with the rat's target distances. A task without such a preset may name one in its
    registration (`register(..., preset=...)`: every dm_control suite task applies `dmc_proprio`).
    Without `--task`, the default task's preset applies unless a listed preset picks the task itself."""
    presets = load_presets(path)
    if task is None:
        if any(isinstance(presets.get(n), Mapping) and "task" in presets[n] for n in names):
            return []
        task = presets["defaults"].get("task")
    if not isinstance(task, str) or task in names:
        return []
    preset = presets.get(task)
    if task != "defaults" and isinstance(preset, Mapping) and preset.get("task") == task:
        return [task]
    named = _registered_preset(task)
    if named is None or named in names:
        return []
    if named == "defaults" or not isinstance(presets.get(named), Mapping):
        raise ConfigError(f"task '{task}' is registered with the config preset '{named}', which {path} does not "
                          f"have; add that preset or point DREAMER_RODENT_CONFIGS at a configs.yaml that has it.")
    return [named]


def _registered_preset(task: str) -> str | None:
    """The preset `task`'s registration names, or None (an unknown task is reported by the caller's checks)."""
    from tasks import registry

    try:
        return registry.get(task).preset
    except registry.UnknownTaskError:
        return None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False

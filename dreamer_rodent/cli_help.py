"""`--help` for the command lines: usage, the presets and every config key, read from configs.yaml.

The key listing is generated from configs.yaml itself (its `defaults` for the
values and types, its comments for what a key does), so it cannot drift from
the keys the config system accepts. Both `train` and `eval` use it.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import textwrap
from typing import Any, Sequence

from dreamer_rodent import config as cfg

HELP_FLAGS = ("-h", "--help")

TRAIN_USAGE = """\
usage: python -m dreamer_rodent.train [--task NAME] [--configs PRESET ...] [--KEY VALUE ...] [--logdir DIR]
       python -m dreamer_rodent.train --help [KEY_PREFIX]

Trains an agent on a task. Rerunning the same command with the same --logdir resumes the run
from its newest complete checkpoint.

  --task NAME          the task (python -m dreamer_rodent.tasks lists them); its preset, if
                       configs.yaml has one, applies first
  --configs A B        presets of configs.yaml (below), stacked in this order over `defaults`
  --KEY VALUE          any config key (below) as a dotted flag: --run.steps 1e5 --agent.opt.lr 1e-4;
                       a list as --env.keys image,proprio; a bare --KEY sets a bool key to true
  --logdir DIR         the run directory (default: a new ./logdir/<UTC time>_<task>)
  -h, --help [PREFIX]  this help; with PREFIX (e.g. agent.opt) only the config keys under it

Order: `defaults`, then the task's preset, then --configs in order, then --KEY flags (last wins).
"""

_KEY_LINE = re.compile(r"^( *)([A-Za-z_][\w.-]*)\s*:(?=\s|$)(.*)$")
_SECTION = re.compile(r"^#\s*-{3,}\s*(.*?)\s*-{3,}\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(\"'])")


@dataclasses.dataclass
class ConfigsDoc:
    """What configs.yaml's comments say, by dotted path (`defaults.run.steps`, `debug`)."""

    line_comments: dict[str, str]  # the comment on the key's own line
    above_comments: dict[str, str]  # the comment lines directly above the key
    sections: dict[str, str]  # top-level name -> the `# ---- title ----` it sits under


def _split_comment(rest: str) -> tuple[str, str]:
    """`value   # comment` -> (value, comment), ignoring `#` inside quotes or without a space before it."""
    quote = None
    for i, char in enumerate(rest):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1:].strip()
    return rest.strip(), ""


def read_comments(text: str) -> ConfigsDoc:
    """Comments of a configs.yaml by key path; block-style YAML as configs.yaml writes it."""
    line_comments: dict[str, str] = {}
    above: dict[str, str] = {}
    sections: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the open block mappings
    pending: list[str] = []
    section = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            header = _SECTION.match(stripped) if not raw.startswith(" ") else None
            if header:
                section, pending = header.group(1), []
            else:
                pending.append(stripped.lstrip("#").strip())
            continue
        match = _KEY_LINE.match(raw)
        if not match:  # a continuation or list line
            pending = []
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        value, comment = _split_comment(rest)
        if comment:
            line_comments[path] = comment
        if pending:
            above[path] = " ".join(pending)
        if not stack:
            sections[key] = section
        pending = []
        if not value:
            stack.append((indent, key))
    return ConfigsDoc(line_comments, above, sections)


def first_sentence(text: str, limit: int = 150) -> str:
    sentence = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return sentence


def show_value(value: Any) -> str:
    """A default as one would type it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return repr(value)
        return f"{value:.1e}".replace("e+0", "e").replace("e-0", "e-")  # 1.0e6, 4.0e-5 as configs.yaml writes them
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else repr(value).replace("'", '"')
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    return str(value)


def type_name(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"list[{cfg._type_name(value[0])}]" if value else "list"
    return cfg._type_name(value)


def _groups(tree: dict, prefix: str = ""):
    """(group path, [(key path, leaf value)]) in document order, parents before their subgroups."""
    leaves, subgroups = [], []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            subgroups.append((path, value))
        else:
            leaves.append((path, value))
    yield prefix.rstrip("."), leaves
    for path, value in subgroups:
        yield from _groups(value, path + ".")


def _all_paths(defaults: dict) -> list[str]:
    paths = []
    for group, leaves in _groups(defaults):
        if group:
            paths.append(group)
        paths.extend(path for path, _ in leaves)
    return paths


def check_prefix(prefix: str, path=None) -> str:
    """`prefix` without a trailing dot, if some config key is it or lies under it; else a ConfigError."""
    defaults = cfg.load_presets(path or cfg.CONFIGS_PATH)["defaults"]
    prefix = prefix.strip().rstrip(".")
    known = _all_paths(defaults)
    if prefix not in known:
        raise cfg.ConfigError(
            f"--help {prefix}: no config key or section is called '{prefix}'.{cfg._closest(prefix, known)} "
            "Run --help alone for every key."
        )
    return prefix


def keys_help(prefix: str | None = None, path=None, title: str | None = None) -> str:
    """Every config key (or those under `prefix`) with its default, type and comment, by section."""
    path = path or cfg.CONFIGS_PATH
    presets = cfg.load_presets(path)
    defaults = presets["defaults"]
    doc = read_comments(_read(path))
    if prefix:
        prefix = check_prefix(prefix, path)
    rows_by_group = []
    for group, leaves in _groups(defaults):
        rows = []
        for key, value in leaves:
            if prefix and not (key == prefix or key.startswith(prefix + ".")):
                continue
            comment = doc.line_comments.get(f"defaults.{key}") or doc.above_comments.get(f"defaults.{key}", "")
            rows.append((key, type_name(value), show_value(value), first_sentence(comment) if comment else ""))
        if rows:
            note = doc.line_comments.get(f"defaults.{group}") or doc.above_comments.get(f"defaults.{group}", "")
            rows_by_group.append((group, first_sentence(note) if note else "", rows))
    width_key = max(len(r[0]) for _, _, rows in rows_by_group for r in rows)
    width_type = max(len(r[1]) for _, _, rows in rows_by_group for r in rows)
    width_value = min(24, max(len(r[2]) for _, _, rows in rows_by_group for r in rows))
    lines = [title or (f"Config keys under {prefix}" if prefix else "Config keys") +
             f" (--KEY VALUE; the default from {path}'s `defaults`, its type, what it does):"]
    for group, note, rows in rows_by_group:
        lines.append(f"  {group or 'top level'}" + (f": {note}" if note else ""))
        for key, kind, value, comment in rows:
            line = f"    {key:<{width_key}}  {kind:<{width_type}}  {value:<{width_value}}"
            lines.append((line + "  " + comment).rstrip() if comment else line.rstrip())
    return "\n".join(lines) + "\n"


def _top_keys(preset: dict) -> str:
    parts = []
    for key, value in preset.items():
        if isinstance(value, dict) and value:
            inner = list(value)
            parts.append(f"{key} ({', '.join(inner[:4] + (['...'] if len(inner) > 4 else []))})")
        else:
            parts.append(key)
    return "sets " + ", ".join(parts) if parts else "sets nothing"


def presets_help(path=None) -> str:
    """One line per preset of configs.yaml, under its `# ---- section ----` title."""
    path = path or cfg.CONFIGS_PATH
    presets = cfg.load_presets(path)
    doc = read_comments(_read(path))
    names = [name for name in presets if name != "defaults"]
    if not names:
        return f"Presets: none in {path}.\n"
    width = max(len(name) for name in names)
    lines = [f"Presets (--configs NAME ...; from {path}):"]
    section = None
    for name in names:
        title = doc.sections.get(name, "")
        if title != section:
            section = title
            if title:
                lines.append(f"  {title}")
        preset = presets[name] if isinstance(presets[name], dict) else {}
        comment = doc.above_comments.get(name, "")
        if comment:
            what = first_sentence(comment)
        elif preset.get("task") == name:
            what = f"task defaults (applied first by --task {name}); " + _top_keys(
                {k: v for k, v in preset.items() if k != "task"})
        else:
            what = _top_keys(preset)
        lines.append(f"    {name:<{width}}  {what}")
    return "\n".join(lines) + "\n"


def train_help(prefix: str | None = None, path=None) -> str:
    if prefix:
        return keys_help(prefix, path)
    return "\n".join([TRAIN_USAGE, presets_help(path), keys_help(None, path)])


def eval_help(usage: str, prefix: str | None = None, path=None) -> str:
    """eval's argparse help, then the config keys its dotted overrides can set."""
    if prefix:
        return keys_help(prefix, path, title=f"Config keys under {prefix.rstrip('.')} that eval can override "
                         "(--KEY VALUE; the run's saved value applies otherwise; below, configs.yaml's defaults):")
    note = textwrap.dedent("""\
        Config overrides: any other flag is a dotted config key (--env.time_limit 10, --jax.platform cpu).
        The run's saved config.yaml is the starting point, so the values below (configs.yaml's defaults)
        apply only where the run did not set the key. --configs does not apply to eval.
        `python -m dreamer_rodent.eval --help PREFIX` lists only the keys under PREFIX (e.g. env).
        """)
    return "\n".join([usage.rstrip() + "\n", note, keys_help(None, path, title="Config keys (default, type, what):")])


def help_request(argv: Sequence[str]) -> tuple[bool, str | None]:
    """(True, prefix or None) when `argv` asks for help: `-h`, `--help`, `--help PREFIX`, `--help=PREFIX`."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--help="):
            return True, arg.split("=", 1)[1] or None
        if arg in HELP_FLAGS:
            following = argv[i + 1] if i + 1 < len(argv) else ""
            return True, following if following and not following.startswith("-") else None
    return False, None


def _read(path) -> str:
    return pathlib.Path(path).read_text()


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value after `--flag` (or in `--flag=value`) in `argv`, or None."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            return argv[i + 1]
    return None


def task_settings_help(task: str | None, module: str | None = None) -> str:
    """The settings a task declares in its registration (`--task_kwargs.NAME`), for `train --task NAME --help`."""
    if not task:
        return ""
    from tasks import registry

    try:
        registry.load_module(module or "")
        entry = registry.get(task)
    except (registry.UnknownTaskError, registry.TaskConfigError) as error:
        return f"\n(task settings: {error})\n"
    if not entry.settings:
        return ""
    width = max(len(name) for name, _, _ in entry.settings)
    lines = [f"\nSettings of task {task} (--task_kwargs.NAME VALUE; only these are accepted):"]
    lines += [f"  {name:<{width}}  default {default!r}: {doc}" for name, default, doc in entry.settings]
    return "\n".join(lines) + "\n"


def split_train_flags(argv: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(a tool's own flags, the train flags after `--`) of an eval/ tool's command line (None: sys.argv)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]

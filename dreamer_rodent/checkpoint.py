"""Checkpoints: a directory of plain arrays and plain data, written atomically.

Layout under a run directory:

    checkpoints/
      latest                      name of the newest complete checkpoint (atomic rewrite)
      ckpt_000012345/             one directory per checkpoint, named by env step
        agent.npz                 agent.save() arrays
        state.json                counters, RNG states, curriculum states, spaces
        config.yaml               the resolved config of the run
        replay.json               which replay chunks belong to this checkpoint
        replay_open_s0000_<start>.npz   the not-yet-full replay chunk of each env stream
        MANIFEST.json             bytes and sha256 of every file above; written last
      replay/
        chunk_s0000_000000001024.npz   full replay chunks, shared by checkpoints
      best/                       with run.eval_every: the best-evaluated agent (no replay), never pruned

A checkpoint is written into `ckpt_X.tmp<pid>/` and renamed when complete, so a
crash mid-write leaves the previous checkpoint as the newest complete one. Nothing
is pickled: arrays are `.npz` (read with `allow_pickle=False`), the rest JSON/YAML.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib
import re
import shutil
import warnings
from typing import Any, Mapping

import numpy as np

from dreamer_rodent.config import Config, ConfigError
from dreamer_rodent.replay import Replay, file_digest

CHECKPOINTS = "checkpoints"
REPLAY_CHUNKS = "replay"
MANIFEST = "MANIFEST.json"
LATEST = "latest"
BEST = "best"  # the best-evaluated checkpoint (run.eval_every), outside the rotation
BEST_PREVIOUS = "best.previous"  # the one it replaces, for the moment between two renames
_NAME = re.compile(r"^ckpt_(\d+)$")

# Config keys that decide array shapes: a checkpoint only fits a config that agrees on them.
SHAPE_KEYS = ("agent.", "env.image_size", "env.keys", "task")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or corrupt, with what to do about it."""


class DiskFullError(CheckpointError):
    """A write into the run directory failed because its disk (or quota) is full."""


def disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from or while handling, is "no space left" (or over quota)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError) or (
                isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)):
            return True
        error = error.__cause__ or error.__context__
    return False


def free_bytes(path) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing parent), None if unknown."""
    path = pathlib.Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def disk_full_message(rundir, what: str, last: pathlib.Path | None) -> str:
    """The one paragraph a full disk gets: where, what was being written, what is safe, what to do."""
    free = free_bytes(rundir)
    room = f" ({free / 2**20:.1f} MiB free there now)" if free is not None else ""
    kept = (f"The last complete checkpoint, {last}, is intact and a rerun resumes from it; the steps since it "
            "are lost." if last is not None else "No checkpoint of this run was complete yet.")
    return (f"the disk holding {rundir} is full{room}: no space left while writing {what}. Nothing half-written "
            f"was left behind. {kept} Free space on that disk (or move the run directory to a larger one and pass "
            "it as --logdir), then rerun the same command.")


@dataclasses.dataclass
class Checkpoint:
    path: pathlib.Path
    step: int
    arrays: dict[str, np.ndarray]
    state: dict
    config: Config
    replay: dict  # the manifest Replay.load takes

    def load_replay(self, replay: Replay) -> None:
        replay.load(self.replay, self.path.parent / REPLAY_CHUNKS, self.path)


def checkpoint_name(step: int) -> str:
    return f"ckpt_{int(step):09d}"


def _plain(value):
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: pathlib.Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Checkpointer:
    """Writes, lists, prunes and loads the checkpoints of one run directory."""

    def __init__(self, rundir, keep: int = 3):
        if int(keep) < 1:
            raise ConfigError(f"run.keep_checkpoints must be >= 1, got {keep}.")
        self.directory = pathlib.Path(rundir) / CHECKPOINTS
        self.keep = int(keep)

    # ---- writing ----------------------------------------------------------

    def save(self, step: int, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any], config: Config,
             replay: Replay | None = None) -> pathlib.Path:
        """Writes checkpoint `ckpt_<step>` completely, then points `latest` at it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = checkpoint_name(step)
        final = self.directory / name
        if final.exists():
            # Saved again at the same env step (a signal right after a resume or a save): nothing
            # trains without env steps, so a complete checkpoint there already holds this state.
            try:
                verify(final)
                _write_text(self.directory / LATEST, name + "\n")
                return final
            except CheckpointError:
                os.rename(final, _free_name(final.with_name(name + ".corrupt")))
        tmp = self.directory / f"{name}.tmp{os.getpid()}"
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        for key, value in arrays.items():
            if value.dtype == object:
                raise CheckpointError(f"agent array '{key}' has dtype object; checkpoints hold plain arrays only.")
        try:
            self._write(tmp, final, step, arrays, state, config, replay)
            _write_text(self.directory / LATEST, name + "\n")
        except BaseException as error:
            # A full disk, a signal, anything: leave no half-written checkpoint, replay chunk or pointer behind.
            shutil.rmtree(tmp, ignore_errors=True)
            for folder in (self.directory, self.directory / REPLAY_CHUNKS):
                for path in folder.glob(f"*.tmp{os.getpid()}"):
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            if disk_full(error):
                complete = self.list()  # the newest complete one (the `latest` pointer may be the write that failed)
                raise DiskFullError(disk_full_message(self.directory.parent, f"checkpoint {name}",
                                                      complete[-1] if complete else None)) from None
            raise
        self.prune()
        return final

    def _write(self, tmp, final, step, arrays, state, config, replay) -> None:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        with open(tmp / "agent.npz", "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        _write_text(tmp / "state.json", json.dumps(_plain(state), indent=1, sort_keys=True))
        _write_text(tmp / "config.yaml", _config_text(config))
        manifest = replay.save(self.directory / REPLAY_CHUNKS, tmp) if replay is not None else {"chunks": []}
        _write_text(tmp / "replay.json", json.dumps(_plain(manifest), indent=1))
        files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in sorted(tmp.iterdir())}
        _write_text(tmp / MANIFEST, json.dumps({"step": int(step), "files": files}, indent=1, sort_keys=True))
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(self.directory)

    def save_best(self, step: int, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any],
                  config: Config) -> pathlib.Path:
        """Writes `checkpoints/best/` (agent, state, config, no replay), replacing the previous best whole.

        Outside the `ckpt_*` rotation: never pruned, never resumed from. The new
        one is complete before the old one steps aside to `best.previous`; a crash
        between the two renames leaves `best.previous`, which `recover_best` (run
        by every prune and by `best_record`) puts back.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self.recover_best()
        final, previous = self.directory / BEST, self.directory / BEST_PREVIOUS
        staged = self.directory / f"{BEST}.new.tmp{os.getpid()}"
        tmp = self.directory / f"{BEST}.tmp{os.getpid()}"
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        try:
            self._write(tmp, staged, step, arrays, state, config, None)
            if final.exists():
                os.rename(final, previous)
            os.rename(staged, final)
            _fsync_dir(self.directory)
        except BaseException as error:
            for path in (tmp, staged):
                shutil.rmtree(path, ignore_errors=True)
            self.recover_best()
            if disk_full(error):
                complete = self.list()
                raise DiskFullError(disk_full_message(self.directory.parent, "the best checkpoint",
                                                      complete[-1] if complete else None)) from None
            raise
        shutil.rmtree(previous, ignore_errors=True)
        return final

    def recover_best(self) -> None:
        """Puts `best.previous` back as `best` if a crash came between save_best's renames; else drops it."""
        final, previous = self.directory / BEST, self.directory / BEST_PREVIOUS
        if not previous.is_dir():
            return
        if not final.is_dir() and (previous / MANIFEST).exists():
            os.rename(previous, final)
        else:
            shutil.rmtree(previous, ignore_errors=True)

    def best_record(self) -> dict | None:
        """The evaluation record (`eval` in its state.json) of `checkpoints/best`, or None without a readable one."""
        self.recover_best()
        try:
            return json.loads((self.directory / BEST / "state.json").read_text()).get("eval")
        except (OSError, ValueError, AttributeError):
            return None

    def prune(self) -> None:
        """Keeps the newest `keep` checkpoints and the replay chunks they use."""
        self.recover_best()
        complete = self.list()
        for path in complete[:-self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        # Leftovers of writes a crash interrupted (one trainer per run directory holds the run lock).
        for path in self.directory.glob("*.tmp*"):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        chunk_dir = self.directory / REPLAY_CHUNKS
        if not chunk_dir.exists():
            return
        used: set[str] = set()
        for path in self.list():
            try:
                used |= Replay.files(json.loads((path / "replay.json").read_text()))
            except (OSError, ValueError):
                return  # cannot tell what an unreadable checkpoint needs: delete nothing
        for path in chunk_dir.iterdir():
            if path.name not in used:
                path.unlink(missing_ok=True)

    # ---- reading ----------------------------------------------------------

    def list(self) -> list[pathlib.Path]:
        """Checkpoint directories that finished writing (have a manifest), oldest first."""
        if not self.directory.exists():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_dir() and (path / MANIFEST).exists():
                found.append((int(match.group(1)), path))
        return [p for _, p in sorted(found)]

    def latest(self) -> pathlib.Path | None:
        return _latest_in(self.directory) if self.directory.is_dir() else None

    def load_latest(self, arrays: bool = True, warn=None) -> Checkpoint | None:
        """The newest checkpoint that verifies and reads; older ones are tried with a warning.

        A corrupt checkpoint is renamed to `<name>.corrupt` (kept for inspection,
        out of rotation) so that later saves and pruning never pick it again.
        `warn(message)` reports each one (default: warnings.warn).
        """
        candidates = self.list()
        latest = self.latest()
        if latest is not None and latest not in candidates:
            candidates.append(latest)
        errors = []
        for n, path in enumerate(reversed(candidates)):
            try:
                checkpoint = load(path, arrays=arrays)
            except CheckpointError as error:
                errors.append(str(error))
                corrupt = _free_name(path.with_name(path.name + ".corrupt"))
                try:
                    os.rename(path, corrupt)
                    where = f" It was moved to {corrupt}."
                except OSError:
                    where = ""
                then = " Falling back to the previous checkpoint." if n + 1 < len(candidates) else ""
                if warn is None:
                    warnings.warn(f"{error}{where}{then}", stacklevel=2)
                else:
                    warn(f"{error}{where}{then}")
                continue
            return checkpoint
        if errors:
            raise CheckpointError(
                f"no complete checkpoint in {self.directory}: " + " | ".join(errors)
                + " Start a new run with another --logdir, or move the damaged directory away."
            )
        return None


def _free_name(path: pathlib.Path) -> pathlib.Path:
    """`path`, or `path.1`, `path.2`, ... if taken (never overwrite what a user may want to inspect)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _config_text(config) -> str:
    from dreamer_rodent.config import yaml_dump

    return yaml_dump(config.to_dict() if isinstance(config, Config) else dict(config))


def verify(path) -> dict:
    """Checks every file against the manifest; returns the manifest or raises CheckpointError."""
    path = pathlib.Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(f"checkpoint {path} is incomplete: it has no {MANIFEST} (the write was interrupted).")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path} has an unreadable {MANIFEST}: {error}.") from None
    for name, meta in files.items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"checkpoint {path} is missing {name}.")
        size = file.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} has {size} bytes, the manifest says {meta['bytes']}.")
        if file_digest(file) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match its sha256 in the manifest.")
    return manifest


def load(path, arrays: bool = True) -> Checkpoint:
    """Verifies and reads one checkpoint directory (no pickle anywhere).

    A file that matches its manifest but does not parse (an `agent.npz` that is a
    pickle or a plain .npy, a state.json that is not JSON, ...) is a CheckpointError
    like any other corruption. OSError passes through: a file that vanished
    mid-read (a running training pruned it) is not a damaged checkpoint.
    """
    path = find(path)
    manifest = verify(path)
    data = {}
    if arrays:
        data = _read(path, "agent.npz", "a numpy .npz archive of arrays", _read_npz)
    state = _read(path, "state.json", "JSON", lambda file: json.loads(file.read_text()))
    config = _read(path, "config.yaml", "a YAML config", Config.load)
    replay = _read(path, "replay.json", "JSON", lambda file: json.loads(file.read_text()))
    return Checkpoint(path, int(manifest.get("step", 0)), data, state, config, replay)


class _NotNpz(ValueError):
    pass


def _read_npz(file: pathlib.Path) -> dict[str, np.ndarray]:
    with open(file, "rb") as f:
        head = f.read(6)
    if head[:1] == b"\x80":  # numpy would suggest allow_pickle=True: never for a checkpoint
        raise _NotNpz("it is a Python pickle, which checkpoints never load")
    if head == b"\x93NUMPY":
        raise _NotNpz("it holds a single .npy array, not an .npz archive")
    if head[:4] != b"PK\x03\x04":
        raise _NotNpz("it is not a zip archive")
    with np.load(file, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _read(path: pathlib.Path, name: str, kind: str, reader):
    try:
        return reader(path / name)
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - any parse failure of a file the manifest vouched for
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        why = detail if isinstance(error, _NotNpz) else f"{type(error).__name__}: {detail}".rstrip(": ")
        raise CheckpointError(
            f"checkpoint {path} is corrupt: {name} matches its sha256 in the manifest but is not {kind} "
            f"({why}); it was written damaged or replaced."
        ) from None


def find(path) -> pathlib.Path:
    """A checkpoint directory from a run directory, its `checkpoints/` or the checkpoint itself."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist.")
    if _NAME.match(path.name) or (path / MANIFEST).exists():
        return path
    for base in (path / CHECKPOINTS, path):
        latest = _latest_in(base) if base.is_dir() else None
        if latest is not None:
            return latest
    raise CheckpointError(
        f"no checkpoint found at {path}: pass a run directory, its checkpoints/ folder, or a ckpt_* directory."
    )


def _latest_in(directory: pathlib.Path) -> pathlib.Path | None:
    """The `latest` pointer's target if it exists, else the newest complete checkpoint."""
    pointer = directory / LATEST
    if pointer.exists():
        target = directory / pointer.read_text().strip()
        if target.is_dir() and _NAME.match(target.name):
            return target
    found = sorted(
        (int(m.group(1)), p) for p in directory.iterdir()
        if (m := _NAME.match(p.name)) and p.is_dir() and (p / MANIFEST).exists()
    )
    return found[-1][1] if found else None


def shape_differences(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """Keys in SHAPE_KEYS whose values differ between two configs."""
    a, b = old.flat(), new.flat()
    keys = sorted(k for k in set(a) | set(b) if any(k == p or (p.endswith(".") and k.startswith(p)) for p in SHAPE_KEYS))
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def check_compatible(old: Config, new: Config, where) -> None:
    """Raises ConfigError naming every shape key that differs from the checkpoint's config."""
    diffs = shape_differences(old, new)
    if diffs:
        listing = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diffs)
        raise ConfigError(
            f"the config does not match the checkpoint in {where}: {listing}. These keys change model or "
            "observation shapes, so the checkpoint cannot be resumed with them. Drop those flags to resume, "
            "or start a new run with another --logdir."
        )


def check_arrays(saved: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray], where) -> None:
    """Raises ConfigError if arrays are missing or differ in shape (for warm starts)."""
    missing = sorted(set(current) - set(saved))
    extra = sorted(set(saved) - set(current))
    shapes = sorted(k for k in set(saved) & set(current) if np.shape(saved[k]) != np.shape(current[k]))
    if missing or extra or shapes:
        parts = []
        if shapes:
            parts.append("different shapes: " + ", ".join(
                f"{k} {tuple(np.shape(saved[k]))} vs {tuple(np.shape(current[k]))}" for k in shapes[:10]))
        if missing:
            parts.append(f"missing in the checkpoint: {', '.join(missing[:10])}")
        if extra:
            parts.append(f"not in this agent: {', '.join(extra[:10])}")
        raise ConfigError(
            f"the agent weights in {where} do not fit this config ({'; '.join(parts)}). Use the same agent.*, "
            "env.image_size, env.keys and task settings as that run."
        )

"""Replay: fixed-length training sequences sampled uniformly from env streams.

Each env worker is one *stream*: its steps are stored in order, in chunks of
`replay.chunk` steps, so that a sequence never mixes two workers (the world model
would learn a teleport). Inside a stream a sequence may run across an episode
boundary; the step that starts the new episode carries `is_first=True`, which is
what the agent resets its latent state on, as in DreamerV3.

Chunks are also the unit of eviction (oldest first, once the stored steps exceed
`replay.capacity`) and of saving: a full chunk is written once as
`chunk_s<stream>_<start>.npz` and never again, so each checkpoint writes only
what is new, and loading fills the buffer one chunk at a time (no second copy).
Images stay uint8 throughout.

With `online=True` (DreamerV3 v2's online queue) every new non-overlapping
sequence of `length` steps of a stream is queued as it completes, and each
batch takes queued sequences first, uniform ones for the rest: every step is
trained on at least once while it is new, not only by the chance of a uniform
draw from a buffer that grows by the hour.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import os
import pathlib
import warnings
from typing import Iterable, Mapping

import numpy as np


class ReplayError(ValueError):
    """Replay data that cannot be stored or sampled, with the reason."""


class _Chunk:
    """Consecutive steps of one stream; `size` of its `capacity` rows are filled."""

    __slots__ = ("stream", "start", "seq", "data", "size", "capacity", "file")

    def __init__(self, stream: int, start: int, seq: int, data: dict, size: int):
        self.stream = stream
        self.start = start  # stream-local index of the first step
        self.seq = seq  # global creation order, for FIFO eviction across streams
        self.data = data
        self.size = size
        self.capacity = len(next(iter(data.values())))
        self.file = None  # name of the saved file once this full chunk is written

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    @property
    def name(self) -> str:
        return f"chunk_s{self.stream:04d}_{self.start:012d}.npz"

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.data.values())


class Replay:
    """Uniform replay over per-stream chunked storage.

    `add(step, stream)` stores one step (obs keys plus `action`); `sample(batch)`
    returns a dict of `[batch, length, ...]` arrays, each row consecutive steps of
    one stream. Steps of every stream are equally likely to start a sequence.
    """

    def __init__(self, length: int, capacity: int, chunk: int = 1024, seed: int = 0, online: bool = False):
        length, capacity, chunk = int(length), int(capacity), int(chunk)
        if length < 1:
            raise ReplayError(f"sequence length must be >= 1, got {length} (set batch_length).")
        if chunk < 1:
            raise ReplayError(f"replay.chunk must be >= 1, got {chunk}.")
        if capacity < length:
            raise ReplayError(
                f"replay.capacity ({capacity}) is smaller than one sequence (batch_length={length}); "
                "raise --replay.capacity."
            )
        self.length = length
        self.capacity = capacity
        self.chunk = chunk
        self.rng = np.random.default_rng(seed)
        self._streams: dict[int, list[_Chunk]] = {}
        self._starts: dict[int, list[int]] = {}  # chunk starts per stream, for bisect
        self._next: dict[int, int] = {}  # stream-local index of the next step
        self._sizes: dict[int, int] = {}  # stored steps per stream
        self._order: collections.deque[_Chunk] = collections.deque()
        self._seq = 0
        self._size = 0
        self._spec: dict[str, tuple[tuple, np.dtype]] | None = None
        self.online = bool(online)
        self._queue: collections.deque[tuple[int, int]] = collections.deque()  # (stream, start) not yet sampled

    # ---- sizes ------------------------------------------------------------

    def __len__(self) -> int:
        """Stored env steps (what `replay.capacity` bounds)."""
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays, including the unfilled rows of open chunks."""
        return sum(c.nbytes for c in self._order)

    @property
    def streams(self) -> list[int]:
        return sorted(self._streams)

    def stream_size(self, stream: int) -> int:
        return self._sizes.get(stream, 0)

    def can_sample(self) -> bool:
        return any(self.stream_size(s) >= self.length for s in self._streams)

    # ---- adding -----------------------------------------------------------

    def add(self, step: Mapping[str, np.ndarray], stream: int = 0) -> None:
        """Stores one step of `stream`. Keys starting with `log/` are not stored."""
        step = {k: np.asarray(v) for k, v in step.items() if not k.startswith("log/")}
        if self._spec is None:
            self._spec = {k: (v.shape, v.dtype) for k, v in step.items()}
        elif step.keys() != self._spec.keys():
            missing = sorted(set(self._spec) - set(step))
            extra = sorted(set(step) - set(self._spec))
            raise ReplayError(f"replay step keys changed: missing {missing}, unexpected {extra}.")
        stream = int(stream)
        chunks = self._streams.setdefault(stream, [])
        starts = self._starts.setdefault(stream, [])
        self._next.setdefault(stream, 0)
        if not chunks or chunks[-1].full:
            chunk = self._new_chunk(stream, self._next[stream])
            chunks.append(chunk)
            starts.append(chunk.start)
        chunk = chunks[-1]
        for key, value in step.items():
            chunk.data[key][chunk.size] = value
        chunk.size += 1
        self._next[stream] += 1
        self._sizes[stream] = self._sizes.get(stream, 0) + 1
        self._size += 1
        if self.online and self._next[stream] % self.length == 0:
            self._queue.append((stream, self._next[stream] - self.length))
        self._evict()

    def add_batch(self, steps: Mapping[str, np.ndarray], streams: Iterable[int] | None = None) -> None:
        """Stores a batch of steps `[N, ...]`, row i to stream `streams[i]` (default i)."""
        n = len(next(iter(steps.values())))
        streams = list(range(n)) if streams is None else list(streams)
        for i, stream in enumerate(streams):
            self.add({k: v[i] for k, v in steps.items()}, stream)

    def end_episodes(self, key: str = "is_last") -> None:
        """Marks the newest step of every stream as the end of its episode.

        The driver restarts all envs when a run starts or resumes, which cuts the
        running episodes short; without the mark, returns computed on replayed
        sequences would run on into the next episode.
        """
        if self._spec is None or key not in self._spec:
            return
        for chunks in self._streams.values():
            if chunks and chunks[-1].size:
                chunk = chunks[-1]
                chunk.data[key][chunk.size - 1] = True
                if chunk.file is not None:
                    # A full chunk is written once; this one changed after it was, so the next save
                    # rewrites it (same shapes, same size) or a later resume would lose the mark.
                    chunk.file = None

    def _new_chunk(self, stream: int, start: int) -> _Chunk:
        data = {k: np.zeros((self.chunk,) + shape, dtype) for k, (shape, dtype) in self._spec.items()}
        chunk = _Chunk(stream, start, self._seq, data, 0)
        self._seq += 1
        self._order.append(chunk)
        return chunk

    def _evict(self) -> None:
        """Drops whole chunks, oldest first, while more than `capacity` steps are stored."""
        while self._size > self.capacity and self._order:
            chunk = self._order.popleft()
            chunks = self._streams[chunk.stream]
            assert chunks[0] is chunk, "a stream's oldest chunk is the oldest of that stream"
            chunks.pop(0)
            self._starts[chunk.stream].pop(0)
            self._sizes[chunk.stream] -= chunk.size
            self._size -= chunk.size

    # ---- sampling ---------------------------------------------------------

    def sample(self, batch: int) -> dict[str, np.ndarray]:
        """`batch` sequences of `length` consecutive steps, each from one stream (queued new ones first)."""
        out = None
        rows = 0
        self.last_positions: list[tuple[int, int]] = []  # (stream, first index) of each row, for `write`
        while self._queue and rows < batch:
            stream, start = self._queue.popleft()
            chunks = self._streams.get(stream)
            if not chunks or start < chunks[0].start:
                continue  # evicted before it was sampled
            if out is None:
                out = {k: np.empty((batch, self.length) + shape, dtype) for k, (shape, dtype) in self._spec.items()}
            self._copy(stream, start, out, rows)
            self.last_positions.append((stream, start))
            rows += 1
        if rows == batch:
            return out
        uniform = self._sample_uniform(batch - rows)
        if out is None:
            return uniform
        for key, array in out.items():
            array[rows:] = uniform[key]
        return out

    @property
    def queued(self) -> int:
        """New sequences waiting in the online queue."""
        return len(self._queue)

    def _sample_uniform(self, batch: int) -> dict[str, np.ndarray]:
        streams = self.streams
        counts = np.array([max(0, self.stream_size(s) - self.length + 1) for s in streams], np.int64)
        total = int(counts.sum())
        if total == 0:
            raise ReplayError(
                f"replay has no stream with {self.length} stored steps yet ({len(self)} steps in "
                f"{len(streams)} streams); prefill more (run.prefill) or shorten batch_length."
            )
        picks = self.rng.integers(0, total, size=batch)
        bounds = np.cumsum(counts)
        out = {k: np.empty((batch, self.length) + shape, dtype) for k, (shape, dtype) in self._spec.items()}
        for b, pick in enumerate(picks):
            i = int(np.searchsorted(bounds, pick, side="right"))
            offset = int(pick - (bounds[i - 1] if i else 0))
            stream = streams[i]
            first = self._streams[stream][0].start
            self._copy(stream, first + offset, out, b)
            self.last_positions.append((stream, first + offset))
        return out

    def write(self, positions, values: Mapping[str, np.ndarray], offset: int = 0) -> None:
        """Overwrites stored steps in place: row i of `values[key]` ([rows, T, ...]) goes to the T steps from
        `positions[i]` + `offset` of its stream (e.g. refreshed latents after an update). Steps evicted since
        are skipped. Full chunks already on disk keep their saved values (a resume loads those)."""
        for row, (stream, index) in enumerate(positions):
            chunks, starts = self._streams.get(stream), self._starts.get(stream)
            if not chunks:
                continue
            for t in range(next(iter(values.values())).shape[1]):
                step = index + offset + t
                k = bisect.bisect_right(starts, step) - 1  # the chunk holding this step, found once for every key
                if k < 0 or step - chunks[k].start >= chunks[k].size:
                    continue
                for key, array in values.items():
                    chunks[k].data[key][step - chunks[k].start] = array[row, t]

    def _copy(self, stream: int, index: int, out: dict, row: int) -> None:
        chunks, starts = self._streams[stream], self._starts[stream]
        pos = 0
        k = bisect.bisect_right(starts, index) - 1
        while pos < self.length:
            chunk = chunks[k]
            lo = index + pos - chunk.start
            take = min(self.length - pos, chunk.size - lo)
            for key, array in out.items():
                array[row, pos:pos + take] = chunk.data[key][lo:lo + take]
            pos += take
            k += 1

    # ---- saving and loading -----------------------------------------------

    def save(self, chunk_dir, open_dir) -> dict:
        """Writes full chunks not yet on disk to `chunk_dir` and open chunks to `open_dir`.

        Returns the plain-data manifest a checkpoint stores to load this replay.
        Files are written to a temporary name and renamed, so a crash mid-write
        never leaves a truncated chunk under its final name.
        """
        chunk_dir, open_dir = pathlib.Path(chunk_dir), pathlib.Path(open_dir)
        chunk_dir.mkdir(parents=True, exist_ok=True)
        open_dir.mkdir(parents=True, exist_ok=True)
        entries, written = [], []
        for chunk in self._order:
            if chunk.full:
                if chunk.file is None or not (chunk_dir / chunk.file).exists():
                    _write_npz(chunk_dir / chunk.name, chunk.data)
                    chunk.file = chunk.name
                    written.append(chunk.name)
                where, name = "chunks", chunk.file
            else:
                name = f"replay_open_s{chunk.stream:04d}_{chunk.start:012d}.npz"
                _write_npz(open_dir / name, {k: v[:chunk.size] for k, v in chunk.data.items()})
                where = "checkpoint"
            entries.append({"file": name, "where": where, "stream": chunk.stream, "start": chunk.start,
                            "size": chunk.size, "seq": chunk.seq,
                            "bytes": os.path.getsize((chunk_dir if where == "chunks" else open_dir) / name)})
        return {
            "length": self.length,
            "chunk": self.chunk,
            "chunks": entries,
            "next": {str(s): n for s, n in self._next.items()},
            "seq": self._seq,
            "rng": _plain_state(self.rng.bit_generator.state),
            "queue": [[stream, start] for stream, start in self._queue],
            "written": written,
        }

    def load(self, manifest: Mapping, chunk_dir, open_dir) -> None:
        """Refills this (empty) replay from a manifest written by `save`.

        Chunks are read one at a time into their final arrays, so peak memory is
        the loaded replay plus one chunk. A missing or unreadable chunk is skipped
        with a warning, together with the older chunks of its stream (a stream
        must stay consecutive); the rest still loads.
        """
        if self._order:
            raise ReplayError("Replay.load needs an empty replay.")
        chunk_dir, open_dir = pathlib.Path(chunk_dir), pathlib.Path(open_dir)
        by_stream: dict[int, list[dict]] = collections.defaultdict(list)
        for entry in manifest["chunks"]:
            by_stream[int(entry["stream"])].append(entry)
        loaded: list[_Chunk] = []
        for stream, entries in by_stream.items():
            entries.sort(key=lambda e: e["start"])
            kept: list[_Chunk] = []
            for entry in entries:
                path = (chunk_dir if entry["where"] == "chunks" else open_dir) / entry["file"]
                try:
                    data = _read_npz(path, int(entry["size"]), int(entry.get("bytes", -1)))
                except Exception as error:  # noqa: BLE001 - any unreadable file is skipped the same way
                    dropped = sum(c.size for c in kept) + int(entry["size"])
                    warnings.warn(
                        f"replay chunk {path} is missing or corrupt ({error}); dropping it and the "
                        f"{len(kept)} older chunks of stream {stream} ({dropped} steps).",
                        stacklevel=2,
                    )
                    kept = []
                    continue
                if kept and kept[-1].start + kept[-1].size != int(entry["start"]):
                    kept = []  # a gap: keep the stream consecutive by starting over from here
                if self._spec is None:
                    self._spec = {k: (v.shape[1:], v.dtype) for k, v in data.items()}
                elif data.keys() != self._spec.keys():
                    raise ReplayError(
                        f"replay chunk {path} has keys {sorted(data)}, expected {sorted(self._spec)}: it "
                        "comes from a run with different env keys."
                    )
                size = int(entry["size"])
                if entry["where"] != "chunks" and size < self.chunk:
                    # The open chunk of its stream: give it room to keep filling.
                    full = {k: np.zeros((self.chunk,) + v.shape[1:], v.dtype) for k, v in data.items()}
                    for k, v in data.items():
                        full[k][:size] = v
                    del data
                    data = full
                chunk = _Chunk(stream, int(entry["start"]), int(entry["seq"]), data, size)
                if entry["where"] == "chunks" and chunk.full:
                    chunk.file = entry["file"]
                kept.append(chunk)
            loaded.extend(kept)
        loaded.sort(key=lambda c: c.seq)
        for chunk in loaded:
            self._streams.setdefault(chunk.stream, []).append(chunk)
            self._starts.setdefault(chunk.stream, []).append(chunk.start)
            self._order.append(chunk)
            self._size += chunk.size
        for stream, n in manifest.get("next", {}).items():
            self._next[int(stream)] = int(n)
        for stream, chunks in self._streams.items():
            self._next[stream] = max(self._next.get(stream, 0), chunks[-1].start + chunks[-1].size)
            self._sizes[stream] = sum(c.size for c in chunks)
        self._seq = max([int(manifest.get("seq", 0))] + [c.seq + 1 for c in self._order])
        if "rng" in manifest:
            self.rng.bit_generator.state = manifest["rng"]
        if self.online:
            self._queue.extend((int(stream), int(start)) for stream, start in manifest.get("queue", [])
                               if stream in self._streams and int(start) >= self._streams[stream][0].start
                               and int(start) + self.length <= self._next[stream])
        self._evict()

    @staticmethod
    def files(manifest: Mapping) -> set[str]:
        """Chunk files (in the shared chunk directory) a manifest refers to."""
        return {e["file"] for e in manifest.get("chunks", []) if e["where"] == "chunks"}


def _write_npz(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_npz(path: pathlib.Path, size: int, nbytes: int) -> dict[str, np.ndarray]:
    if nbytes >= 0 and os.path.getsize(path) != nbytes:
        raise ReplayError(f"size {os.path.getsize(path)} bytes, manifest says {nbytes}")
    with np.load(path, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    for key, value in data.items():
        if len(value) < size:
            raise ReplayError(f"key '{key}' has {len(value)} steps, manifest says {size}")
    return data


def _plain_state(state):
    if isinstance(state, dict):
        return {k: _plain_state(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return state.tolist()
    if isinstance(state, np.integer):
        return int(state)
    return state


def file_digest(path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

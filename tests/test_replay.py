"""Replay: sequences stay inside one stream, eviction is FIFO, chunks save and load."""

import os
import tracemalloc

import numpy as np
import pytest

from dreamer_rodent.replay import Replay, ReplayError


def _step(stream, index, first=False, image=8):
    """A step whose values encode where it came from, so a sample can be checked."""
    return {
        "image": np.full((image, image, 3), (index + 7 * stream) % 256, np.uint8),
        "stream_id": np.int32(stream),
        "index": np.int64(index),
        "is_first": np.bool_(first),
        "action": np.full((3,), index, np.float32),
        "log/success": np.float32(1.0),
    }


def _fill(replay, streams, steps, episode=10):
    for t in range(steps):
        for s in streams:
            replay.add(_step(s, t, first=(t % episode == 0)), stream=s)


def test_sequences_never_cross_streams_and_are_consecutive():
    replay = Replay(length=12, capacity=10_000, chunk=8, seed=1)
    _fill(replay, streams=[0, 1, 2], steps=50, episode=10)
    # Uneven streams: stream 3 has fewer steps than one sequence and must never be drawn.
    for t in range(5):
        replay.add(_step(3, t, first=t == 0), stream=3)
    batch = replay.sample(256)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (256, 12, 8, 8, 3)
    assert "log/success" not in batch  # metrics are not training data
    for row in range(256):
        streams = batch["stream_id"][row]
        assert np.all(streams == streams[0]) and streams[0] != 3
        index = batch["index"][row]
        np.testing.assert_array_equal(np.diff(index), 1)  # consecutive, also across chunk borders
        # Episode boundaries inside a sequence are marked where they happened.
        np.testing.assert_array_equal(batch["is_first"][row], index % 10 == 0)
        np.testing.assert_array_equal(batch["action"][row, :, 0], index)


def test_sampling_is_uniform_over_start_positions():
    replay = Replay(length=4, capacity=10_000, chunk=16, seed=0)
    _fill(replay, streams=[0], steps=40)
    _fill(replay, streams=[1], steps=10)
    starts = {}
    batch = replay.sample(20_000)
    for s, i in zip(batch["stream_id"][:, 0], batch["index"][:, 0]):
        starts[(int(s), int(i))] = starts.get((int(s), int(i)), 0) + 1
    # 37 starts in stream 0 and 7 in stream 1: each about 20000/44 = 455 times.
    assert len(starts) == 44
    counts = np.array(list(starts.values()))
    assert counts.min() > 300 and counts.max() < 620


def test_capacity_evicts_oldest_chunks_first():
    replay = Replay(length=4, capacity=100, chunk=10, seed=0)
    _fill(replay, streams=[0, 1], steps=120)
    assert len(replay) <= 100
    assert len(replay) >= 100 - 10  # evicts whole chunks only
    batch = replay.sample(2000)
    # Only the newest steps of each stream survive.
    assert batch["index"].min() >= 120 - 60
    assert batch["index"].max() == 119
    for s in (0, 1):
        assert 40 <= replay.stream_size(s) <= 60


def test_memory_report_counts_arrays():
    replay = Replay(length=4, capacity=1000, chunk=10, seed=0)
    assert replay.nbytes == 0
    per_step = 16 * 16 * 3 + 4 + 8 + 1 + 3 * 4  # image, stream_id, index, is_first, action
    replay.add(_step(0, 0, image=16), stream=0)
    assert replay.nbytes == 10 * per_step  # one preallocated chunk of 10 steps
    for t in range(1, 26):
        for s in (0, 1):
            replay.add(_step(s, t, image=16), stream=s)
    # stream 0: 26 steps -> 3 chunks; stream 1: 25 steps -> 3 chunks.
    assert replay.nbytes == 6 * 10 * per_step
    assert len(replay) == 51


def test_empty_or_short_replay_says_what_to_do():
    replay = Replay(length=8, capacity=100, chunk=4)
    _fill(replay, streams=[0, 1], steps=5)
    with pytest.raises(ReplayError, match="prefill"):
        replay.sample(2)
    with pytest.raises(ReplayError, match="replay.capacity"):
        Replay(length=64, capacity=10, chunk=4)


def test_save_load_round_trip_and_incremental(tmp_path):
    replay = Replay(length=6, capacity=10_000, chunk=8, seed=3)
    _fill(replay, streams=[0, 1], steps=21)
    chunks, ckpt1 = tmp_path / "replay", tmp_path / "ckpt1"
    manifest = replay.save(chunks, ckpt1)
    # 21 steps per stream: two full chunks each are shared files, the open rest goes with the checkpoint.
    assert sorted(manifest["written"]) == sorted(os.listdir(chunks)) and len(manifest["written"]) == 4
    assert sorted(os.listdir(ckpt1)) == ["replay_open_s0000_000000000016.npz", "replay_open_s0001_000000000016.npz"]
    for name in os.listdir(chunks):
        with np.load(chunks / name, allow_pickle=False) as npz:
            assert npz["image"].dtype == np.uint8

    restored = Replay(length=6, capacity=10_000, chunk=8, seed=99)
    restored.load(manifest, chunks, ckpt1)
    assert len(restored) == len(replay) == 42
    assert restored.nbytes == replay.nbytes
    # Same RNG state and data: identical samples.
    a, b = replay.sample(32), restored.sample(32)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])

    # Adding continues the open chunk; the next save writes only the newly full chunks.
    mtimes = {n: os.stat(chunks / n).st_mtime_ns for n in os.listdir(chunks)}
    for t in range(21, 30):
        for s in (0, 1):
            restored.add(_step(s, t), stream=s)
    manifest2 = restored.save(chunks, tmp_path / "ckpt2")
    assert sorted(manifest2["written"]) == ["chunk_s0000_000000000016.npz", "chunk_s0001_000000000016.npz"]
    for name, mtime in mtimes.items():
        assert os.stat(chunks / name).st_mtime_ns == mtime
    batch = restored.sample(500)
    for row in range(500):
        np.testing.assert_array_equal(np.diff(batch["index"][row]), 1)
        assert len(set(batch["stream_id"][row])) == 1


def test_corrupt_chunk_is_skipped_with_its_older_steps(tmp_path):
    replay = Replay(length=4, capacity=10_000, chunk=8, seed=0)
    _fill(replay, streams=[0, 1], steps=30)
    manifest = replay.save(tmp_path / "replay", tmp_path / "ckpt")
    victim = tmp_path / "replay" / "chunk_s0000_000000000008.npz"
    victim.write_bytes(victim.read_bytes()[:100])
    restored = Replay(length=4, capacity=10_000, chunk=8)
    with pytest.warns(UserWarning, match="chunk_s0000_000000000008.npz.*corrupt"):
        restored.load(manifest, tmp_path / "replay", tmp_path / "ckpt")
    assert restored.stream_size(1) == 30
    assert restored.stream_size(0) == 30 - 16  # the chunk and the older one before it are gone
    batch = restored.sample(300)
    for row in range(300):
        np.testing.assert_array_equal(np.diff(batch["index"][row]), 1)


def test_loading_does_not_double_memory(tmp_path):
    replay = Replay(length=4, capacity=100_000, chunk=64, seed=0)
    for t in range(640):
        for s in (0, 1):
            replay.add(_step(s, t, image=32), stream=s)
    manifest = replay.save(tmp_path / "replay", tmp_path / "ckpt")
    size = replay.nbytes
    del replay
    restored = Replay(length=4, capacity=100_000, chunk=64)
    tracemalloc.start()
    restored.load(manifest, tmp_path / "replay", tmp_path / "ckpt")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert restored.nbytes == size
    one_chunk = size / 20
    assert peak < size + 3 * one_chunk, (peak, size)


def test_resume_with_another_chunk_size_keeps_every_step(tmp_path):
    replay = Replay(length=4, capacity=10_000, chunk=8, seed=0)
    _fill(replay, streams=[0, 1], steps=30)
    manifest = replay.save(tmp_path / "replay", tmp_path / "ckpt1")
    bigger = Replay(length=4, capacity=10_000, chunk=32, seed=0)
    bigger.load(manifest, tmp_path / "replay", tmp_path / "ckpt1")
    assert len(bigger) == 60
    for t in range(30, 40):
        for s in (0, 1):
            bigger.add(_step(s, t), stream=s)
    manifest2 = bigger.save(tmp_path / "replay", tmp_path / "ckpt2")
    again = Replay(length=4, capacity=10_000, chunk=32, seed=0)
    again.load(manifest2, tmp_path / "replay", tmp_path / "ckpt2")
    assert len(again) == 80
    batch = again.sample(500)
    for row in range(500):
        np.testing.assert_array_equal(np.diff(batch["index"][row]), 1)
        assert len(set(batch["stream_id"][row])) == 1
    assert batch["index"].max() == 39 and batch["index"].min() == 0


def test_end_episodes_marks_the_newest_step_of_each_stream():
    replay = Replay(length=4, capacity=1000, chunk=8)
    for t in range(10):
        for s in (0, 1):
            replay.add({**_step(s, t), "is_last": np.bool_(False)}, stream=s)
    replay.end_episodes()
    for t in range(10, 14):
        for s in (0, 1):
            replay.add({**_step(s, t, first=t == 10), "is_last": np.bool_(False)}, stream=s)
    batch = replay.sample(400)
    for row in range(400):
        np.testing.assert_array_equal(batch["is_last"][row], batch["index"][row] == 9)


def test_end_mark_on_an_already_saved_full_chunk_survives_the_next_save(tmp_path):
    """A resume whose newest step ends a full (already written) chunk: the mark reaches the next checkpoint."""
    replay = Replay(length=4, capacity=1000, chunk=8)
    for t in range(8):
        replay.add({**_step(0, t), "is_last": np.bool_(False)}, stream=0)
    chunks = tmp_path / "replay"
    replay.save(chunks, tmp_path / "ckpt1")
    replay.end_episodes()
    for t in range(8, 12):
        replay.add({**_step(0, t, first=t == 8), "is_last": np.bool_(False)}, stream=0)
    manifest = replay.save(chunks, tmp_path / "ckpt2")
    restored = Replay(length=4, capacity=1000, chunk=8)
    restored.load(manifest, chunks, tmp_path / "ckpt2")
    batch = restored.sample(200)
    for row in range(200):
        np.testing.assert_array_equal(batch["is_last"][row], batch["index"][row] == 7)


def test_online_queue_serves_each_new_sequence_once_then_uniform(tmp_path):
    replay = Replay(length=4, capacity=10_000, chunk=8, seed=0, online=True)
    _fill(replay, streams=[0, 1], steps=8)  # two complete new sequences per stream: starts 0 and 4
    assert replay.queued == 4
    batch = replay.sample(3)
    starts = [(int(s), int(i)) for s, i in zip(batch["stream_id"][:, 0], batch["index"][:, 0])]
    assert starts == [(0, 0), (1, 0), (0, 4)]  # queued first, in the order they completed
    batch = replay.sample(5)
    assert (int(batch["stream_id"][0, 0]), int(batch["index"][0, 0])) == (1, 4)  # the last queued one ...
    assert replay.queued == 0  # ... then uniform draws fill the batch
    for row in range(5):
        np.testing.assert_array_equal(np.diff(batch["index"][row]), 1)
    # The queue survives a save and load; a plain replay has none.
    for t in range(8, 12):  # a third sequence of stream 0
        replay.add(_step(0, t), stream=0)
    assert replay.queued == 1
    manifest = replay.save(tmp_path / "chunks", tmp_path / "open")
    restored = Replay(length=4, capacity=10_000, chunk=8, online=True)
    restored.load(manifest, tmp_path / "chunks", tmp_path / "open")
    assert restored.queued == 1
    assert int(restored.sample(1)["index"][0, 0]) == 8
    plain = Replay(length=4, capacity=10_000, chunk=8, seed=0)
    _fill(plain, streams=[0], steps=8)
    assert plain.queued == 0


def test_online_queue_skips_sequences_evicted_before_they_were_sampled():
    replay = Replay(length=4, capacity=16, chunk=8, seed=0, online=True)
    _fill(replay, streams=[0], steps=32)  # 8 sequences queued; only the newest 16 steps are kept
    batch = replay.sample(8)
    starts = [int(i) for i in batch["index"][:4, 0]]
    assert starts == [16, 20, 24, 28]  # the evicted ones (0..12) were dropped from the queue
    assert batch["index"].min() >= 16

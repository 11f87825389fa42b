"""Checkpoints: atomic, pruned to the last K, verified on load, plain data only."""

import json
import os
import zipfile

import numpy as np
import pytest

from dreamer_rodent import checkpoint as ckpt
from dreamer_rodent.config import ConfigError, build_config
from dreamer_rodent.replay import Replay


def _arrays(scale=1.0):
    return {"enc/w": np.full((3, 4), scale, np.float32), "dyn/b": np.arange(5, dtype=np.float32) * scale,
            "opt/count": np.array(7, np.int32)}


def _state(step):
    return {"counters": {"env_steps": step, "train_steps": step // 2, "episodes": 3},
            "rng": {"driver": {"state": 2**100 + step}}, "curriculum": [{"level": np.int64(2)}]}


def _replay(steps):
    replay = Replay(length=4, capacity=10_000, chunk=8, seed=0)
    for t in range(steps):
        for s in (0, 1):
            replay.add({"image": np.full((4, 4, 3), t % 256, np.uint8), "index": np.int64(t)}, stream=s)
    return replay


def test_round_trip_plain_files_only(tmp_path):
    config = build_config(["debug"])
    saver = ckpt.Checkpointer(tmp_path, keep=2)
    replay = _replay(20)
    path = saver.save(100, _arrays(), _state(100), config, replay)
    assert path.name == "ckpt_000000100"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "ckpt_000000100"
    names = sorted(os.listdir(path))
    assert names == ["MANIFEST.json", "agent.npz", "config.yaml", "replay.json", "replay_open_s0000_000000000016.npz",
                     "replay_open_s0001_000000000016.npz", "state.json"]
    # No pickle: every array file loads with allow_pickle=False and holds only .npy members.
    for npz in list(path.glob("*.npz")) + list((tmp_path / "checkpoints" / "replay").glob("*.npz")):
        with zipfile.ZipFile(npz) as z:
            assert all(n.endswith(".npy") for n in z.namelist())
        np.load(npz, allow_pickle=False)
    loaded = ckpt.load(tmp_path)  # a run directory finds its latest checkpoint
    assert loaded.step == 100 and loaded.path == path
    for key, value in _arrays().items():
        np.testing.assert_array_equal(loaded.arrays[key], value)
    assert loaded.state["counters"]["env_steps"] == 100
    assert loaded.state["rng"]["driver"]["state"] == 2**100 + 100  # big ints survive JSON
    assert loaded.config == config
    restored = Replay(length=4, capacity=10_000, chunk=8)
    loaded.load_replay(restored)
    assert len(restored) == 40
    with pytest.raises(ckpt.CheckpointError, match="plain arrays"):
        saver.save(200, {"bad": np.array([{"a": 1}], dtype=object)}, _state(200), config)


def test_crash_mid_write_leaves_last_good(tmp_path, monkeypatch):
    config = build_config(["debug"])
    saver = ckpt.Checkpointer(tmp_path, keep=3)
    saver.save(10, _arrays(1.0), _state(10), config, _replay(10))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt, "file_digest", crash)  # dies after the arrays were written
    with pytest.raises(KeyboardInterrupt):
        saver.save(20, _arrays(2.0), _state(20), config, _replay(20))
    monkeypatch.undo()
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert not any(".tmp" in n for n in leftovers) and "ckpt_000000020" not in leftovers  # cleaned on the way out
    loaded = ckpt.Checkpointer(tmp_path).load_latest()
    assert loaded.step == 10
    np.testing.assert_array_equal(loaded.arrays["enc/w"], _arrays(1.0)["enc/w"])
    # A SIGKILL cleans nothing up; the next save removes what it left.
    (tmp_path / "checkpoints" / "ckpt_000000020.tmp999").mkdir()
    (tmp_path / "checkpoints" / "ckpt_000000020.tmp999" / "agent.npz").write_bytes(b"half")
    saver.save(30, _arrays(3.0), _state(30), config, _replay(30))
    assert not any(".tmp" in p.name for p in (tmp_path / "checkpoints").iterdir())


def test_a_full_disk_while_saving_is_one_clear_error_and_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    from conftest import FullDisk

    from dreamer_rodent import replay as replay_module

    config = build_config(["debug"])
    saver = ckpt.Checkpointer(tmp_path, keep=3)
    saver.save(10, _arrays(1.0), _state(10), config, _replay(10))
    counting = FullDisk(10**9)
    monkeypatch.setattr(ckpt, "open", counting.open, raising=False)
    monkeypatch.setattr(replay_module, "open", counting.open, raising=False)
    ckpt.Checkpointer(tmp_path / "measure").save(20, _arrays(2.0), _state(20), config, _replay(40))
    monkeypatch.undo()
    total = 10**9 - counting.budget
    for budget in (10, total // 2, total - 10):  # full in the arrays, in the replay chunks, at the last pointer
        disk = FullDisk(budget)
        monkeypatch.setattr(ckpt, "open", disk.open, raising=False)
        monkeypatch.setattr(replay_module, "open", disk.open, raising=False)
        with pytest.raises(ckpt.DiskFullError) as caught:
            saver.save(20, _arrays(2.0), _state(20), config, _replay(40))
        monkeypatch.undo()
        message = str(caught.value)
        assert f"the disk holding {tmp_path} is full" in message and "writing checkpoint ckpt_000000020" in message
        assert ckpt.disk_full(caught.value) and "Free space" in message
        leftovers = [p.name for p in (tmp_path / "checkpoints").rglob("*") if ".tmp" in p.name]
        assert leftovers == [], budget
        # Full before the checkpoint was complete: the previous one is the newest; full only at the `latest`
        # pointer: the new one is complete, and that is the one named and resumed.
        good = 10 if budget < total - 10 else 20
        assert f"ckpt_{good:09d}, is intact" in message
        assert saver.list()[-1].name == f"ckpt_{good:09d}"
        assert ckpt.Checkpointer(tmp_path).load_latest().step == good
    saver.save(30, _arrays(3.0), _state(30), config, _replay(40))  # with room again saving works
    assert ckpt.load(tmp_path).step == 30


def test_keeps_last_k_and_their_replay_chunks(tmp_path):
    config = build_config(["debug"])
    saver = ckpt.Checkpointer(tmp_path, keep=2)
    replay = Replay(length=4, capacity=40, chunk=8, seed=0)
    for step in range(1, 6):
        for t in range(16):
            replay.add({"index": np.int64(step * 100 + t)}, stream=0)
        saver.save(step * 16, _arrays(step), _state(step * 16), config, replay)
    assert [p.name for p in saver.list()] == ["ckpt_000000064", "ckpt_000000080"]
    used = set()
    for path in saver.list():
        used |= Replay.files(json.loads((path / "replay.json").read_text()))
    on_disk = set(os.listdir(tmp_path / "checkpoints" / "replay"))
    assert on_disk == used  # chunks evicted from every kept checkpoint are deleted
    assert len(on_disk) < 10


def test_corrupt_checkpoint_is_detected_and_falls_back(tmp_path):
    config = build_config(["debug"])
    saver = ckpt.Checkpointer(tmp_path, keep=3)
    saver.save(10, _arrays(1.0), _state(10), config, _replay(10))
    newest = saver.save(20, _arrays(2.0), _state(20), config, _replay(20))
    data = bytearray((newest / "agent.npz").read_bytes())
    data[-40] ^= 0xFF
    (newest / "agent.npz").write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=r"ckpt_000000020 is corrupt: agent.npz does not match its sha256"):
        ckpt.load(newest)
    with pytest.warns(UserWarning, match="corrupt.*Falling back"):
        loaded = saver.load_latest()
    assert loaded.step == 10
    assert (tmp_path / "checkpoints" / "ckpt_000000020.corrupt").is_dir()  # kept for inspection
    # A truncated file is reported by size.
    (loaded.path / "state.json").write_text("{}")
    with pytest.raises(ckpt.CheckpointError, match="state.json has 2 bytes"):
        ckpt.load(loaded.path)
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        with pytest.warns(UserWarning):
            saver.load_latest()


def test_shape_mismatch_names_the_keys():
    old = build_config(["debug"])
    new = build_config(["debug"], {"agent.rssm.deter": 64, "env.image_size": 32, "run.steps": 5})
    with pytest.raises(ConfigError) as info:
        ckpt.check_compatible(old, new, "runs/x")
    message = str(info.value)
    assert "agent.rssm.deter: checkpoint 32, now 64" in message
    assert "env.image_size: checkpoint 16, now 32" in message
    assert "run.steps" not in message  # run settings may change on resume
    ckpt.check_compatible(old, build_config(["debug"], {"run.steps": 5, "run.envs": 3}), "runs/x")
    with pytest.raises(ConfigError, match=r"enc/w \(3, 4\) vs \(3, 5\)"):
        ckpt.check_arrays(_arrays(), {**_arrays(), "enc/w": np.zeros((3, 5))}, "runs/x")


def test_find_accepts_run_checkpoints_or_ckpt_dir(tmp_path):
    config = build_config(["debug"])
    saver = ckpt.Checkpointer(tmp_path, keep=3)
    saver.save(10, _arrays(), _state(10), config)
    path = saver.save(20, _arrays(), _state(20), config)
    assert ckpt.find(tmp_path) == path
    assert ckpt.find(tmp_path / "checkpoints") == path
    assert ckpt.find(tmp_path / "checkpoints" / "ckpt_000000010").name == "ckpt_000000010"
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.find(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint found"):
        ckpt.find(tmp_path / "empty")


def test_saving_the_same_step_again_keeps_the_complete_one(tmp_path):
    config = build_config(["debug"])
    saver = ckpt.Checkpointer(tmp_path, keep=3)
    first = saver.save(10, _arrays(1.0), _state(10), config, _replay(10))
    manifest = (first / "MANIFEST.json").read_text()
    again = saver.save(10, _arrays(1.0), _state(10), config, _replay(10))
    assert again == first and (first / "MANIFEST.json").read_text() == manifest
    # A damaged one at that step is moved aside (kept) and written anew.
    (first / "agent.npz").write_bytes(b"garbage")
    path = saver.save(10, _arrays(2.0), _state(10), config, _replay(10))
    assert (tmp_path / "checkpoints" / "ckpt_000000010.corrupt").is_dir()
    np.testing.assert_array_equal(ckpt.load(path).arrays["enc/w"], _arrays(2.0)["enc/w"])


def _replace_keeping_the_manifest(checkpoint, name, data: bytes):
    """Writes `data` as checkpoint/name and updates its size and sha256 in the manifest, as a faulty writer would."""
    (checkpoint / name).write_bytes(data)
    manifest = json.loads((checkpoint / "MANIFEST.json").read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": ckpt.file_digest(checkpoint / name)}
    (checkpoint / "MANIFEST.json").write_text(json.dumps(manifest))


def test_files_that_match_the_manifest_but_do_not_parse_are_corrupt_and_fall_back(tmp_path):
    import io
    import pickle

    config = build_config(["debug"])
    saver = ckpt.Checkpointer(tmp_path, keep=3)
    saver.save(10, _arrays(1.0), _state(10), config, _replay(10))
    newest = saver.save(20, _arrays(2.0), _state(20), config, _replay(20))
    _replace_keeping_the_manifest(newest, "agent.npz", pickle.dumps(_arrays(2.0)))
    with pytest.raises(ckpt.CheckpointError, match=r"ckpt_000000020 is corrupt: agent.npz matches its sha256 in the "
                                                   r"manifest but is not a numpy .npz archive of arrays \(it is a Python pickle"):
        ckpt.load(newest)
    warned = []
    loaded = saver.load_latest(warn=warned.append)
    assert loaded.step == 10 and len(warned) == 1
    assert "ckpt_000000020 is corrupt: agent.npz" in warned[0] and "Falling back to the previous checkpoint" in warned[0]
    assert (tmp_path / "checkpoints" / "ckpt_000000020.corrupt" / "agent.npz").exists()  # kept for inspection
    # A plain .npy, and a state.json that is not JSON: the same error, naming the file.
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    _replace_keeping_the_manifest(loaded.path, "agent.npz", buffer.getvalue())
    with pytest.raises(ckpt.CheckpointError, match="agent.npz .* single .npy array"):
        ckpt.load(loaded.path)
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        saver.load_latest(warn=warned.append)
    assert "Falling back" not in warned[-1]  # nothing older was left to fall back to
    later = saver.save(30, _arrays(3.0), _state(30), config)
    _replace_keeping_the_manifest(later, "state.json", b"{not json")
    with pytest.raises(ckpt.CheckpointError, match="state.json matches its sha256 in the manifest but is not JSON"):
        ckpt.load(later)

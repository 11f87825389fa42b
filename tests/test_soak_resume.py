"""eval/soak_resume.py's own checks, on checkpoints made by hand (the soak itself is a benchmark, not a test)."""

import numpy as np

from dreamer_rodent import checkpoint as ckpt
from dreamer_rodent.config import build_config
from dreamer_rodent.replay import Replay

from eval_scripts import load_script


def _soak():
    return load_script("eval/soak_resume.py")


def _save(rundir, steps_per_stream, counted, keep=5):
    replay = Replay(length=4, capacity=10_000, chunk=8, seed=0)
    for t in range(steps_per_stream):
        for stream in (0, 1):
            replay.add({"x": np.float32(t)}, stream=stream)
    state = {"counters": {"env_steps": counted, "train_steps": 0, "episodes": 0}}
    return ckpt.Checkpointer(rundir, keep).save(counted, {"w": np.zeros(2, np.float32)}, state,
                                                build_config(["debug"]), replay)


def test_steps_counted_once_accepts_a_tiling_replay_and_names_a_double_count(tmp_path):
    soak = _soak()
    path = _save(tmp_path / "good", 20, 40)
    assert soak.steps_counted_once(ckpt.load(path)) is None
    assert soak.newest_complete(tmp_path / "good") == path
    counted_twice = _save(tmp_path / "bad", 20, 60)  # the counter ran ahead of what was stored
    assert "holds 40 steps, the env-step counter says 60" in soak.steps_counted_once(ckpt.load(counted_twice))
    loaded = ckpt.load(path)
    second = next(e for e in loaded.replay["chunks"] if e["stream"] == 0 and e["start"] == 8)
    second["start"] = 4  # a chunk that overlaps the one before
    assert "stream 0: a chunk starts at step 4, the one before ended at 8" in soak.steps_counted_once(loaded)


def test_newest_complete_skips_a_checkpoint_killed_mid_write(tmp_path):
    soak = _soak()
    first = _save(tmp_path, 20, 40)
    (tmp_path / "checkpoints" / "ckpt_000000099.tmp123").mkdir()  # a write a SIGKILL interrupted
    assert soak.newest_complete(tmp_path) == first
    assert soak.writing(tmp_path, "checkpoint") and not soak.writing(tmp_path, "replay")

"""eval --record: an NWB file whose series line up with the MP4 and the JSON, reopened with pynwb."""

import json
import pathlib

import imageio.v2 as imageio
import numpy as np
import pytest

from dreamer_rodent import eval as evaluation
from dreamer_rodent import train

from eval_scripts import load_script

pynwb = pytest.importorskip("pynwb")

TIME_LIMIT = "0.3"  # seconds per eval episode: ball 15 steps (20 ms), rat 8 (40 ms with action repeat 2)
AGENT = {"deter", "stoch_probs", "stoch", "actor_mean", "actor_std", "action", "value", "reward", "cont"}
BODY = {"joint_angle", "joint_velocity", "actuator_ctrl", "head_orientation", "torso_orientation", "reward",
        "target_distance", "position"}
POSITIONS = {"head_position", "torso_position", "target_position"}


def _latents():
    return load_script("eval/analysis/latents.py")


def _train(tmp_path_factory, task):
    logdir = tmp_path_factory.mktemp("runs") / task
    code = train.main([
        "--task", task, "--configs", "debug", "--logdir", str(logdir), "--run.steps", "20", "--run.prefill", "20",
        "--run.envs", "1", "--run.env_parallel", "none", "--env.time_limit", "0.5", "--run.progress", "false",
        "--logging.tensorboard", "false",
    ])
    assert code == 0
    return logdir


@pytest.fixture(scope="module")
def ball_run(tmp_path_factory):
    return _train(tmp_path_factory, "ball_goto")


@pytest.fixture(scope="module")
def rat_run(tmp_path_factory):
    return _train(tmp_path_factory, "rodent_goto")


def _evaluate(run, out, *flags):
    code = evaluation.main(["--checkpoint", str(run), "--episodes", "2", "--size", "64x48", "--level", "0",
                            "--env.time_limit", TIME_LIMIT, "--out", str(out), *flags])
    assert code == 0
    return json.loads(out.with_suffix(".json").read_text())


def _columns(series):
    return json.loads(series.comments).get("columns")


def _check_file(path, scores, every, control=False):
    """Every series present, named and with units; one clock that matches the episodes and the video."""
    lengths = [e["length"] for e in scores["per_episode"]]
    kept = [len(range(0, n + 1, every)) for n in lengths]  # observations 0..length, one in `every`
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        epochs = nwb.epochs.to_dataframe()
        assert list(epochs["episode"]) == [1, 2] and list(epochs["length"]) == lengths
        assert list(epochs["return"]) == pytest.approx([e["return"] for e in scores["per_episode"]])
        dt = json.loads(nwb.experiment_description)["step_seconds"]
        assert list(epochs["stop_time"] - epochs["start_time"]) == pytest.approx([n * dt for n in lengths])
        modules = {"agent", "behavior"} | ({"agent_untrained"} if control else set())
        assert set(nwb.processing) == modules
        for module in ("agent", "agent_untrained") if control else ("agent",):
            names = set(nwb.processing[module].data_interfaces)
            assert AGENT <= names and {"embed_image", "embed_vestibular", "embed_proprio", "embed_task"} <= names
        assert BODY <= set(nwb.processing["behavior"].data_interfaces)
        assert set(nwb.processing["behavior"]["position"].spatial_series) == POSITIONS
        assert {"obs_vestibular", "obs_proprio", "obs_target", "video"} <= set(nwb.acquisition)

        clock = nwb.processing["agent"]["deter"].timestamps[:]
        starts = np.asarray(epochs["start_time"])
        expected = np.concatenate([s + np.arange(0, n + 1, every) * dt for s, n in zip(starts, lengths)])
        assert clock == pytest.approx(expected)
        series = [s for m in nwb.processing.values() for s in m.data_interfaces.values() if hasattr(s, "data")]
        series += list(nwb.processing["behavior"]["position"].spatial_series.values())
        series += [s for name, s in nwb.acquisition.items() if name != "video"]
        for s in series:
            assert s.data.shape[0] == sum(kept), s.name
            assert np.array_equal(s.timestamps[:], clock), s.name  # the shared clock
            assert s.unit and s.description, s.name
            columns = _columns(s)
            if columns is not None:
                assert len(columns) == s.data.shape[-1] and len(set(columns)) == len(columns), s.name
        behavior, agent = nwb.processing["behavior"], nwb.processing["agent"]
        assert len(_columns(behavior["joint_angle"])) > 0 and _columns(behavior["actuator_ctrl"])
        assert _columns(agent["action"]) == _columns(behavior["actuator_ctrl"])
        assert _columns(nwb.acquisition["obs_vestibular"])[0].endswith("[0]")
        probs = agent["stoch_probs"].data[:]
        assert np.allclose(probs.sum(-1), 1.0, atol=1e-5)
        onehot = agent["stoch"].data[:]
        assert onehot.dtype == np.uint8 and np.all(onehot.sum(-1) == 1)
        assert np.all(agent["actor_std"].data[:] > 0) and np.all(np.abs(agent["action"].data[:]) <= 1)
        assert np.all((agent["cont"].data[:] >= 0) & (agent["cont"].data[:] <= 1))
        quat = behavior["torso_orientation"].data[:]
        assert np.allclose(np.linalg.norm(quat, axis=-1), 1.0, atol=1e-4)

        video = nwb.acquisition["video"]
        mp4 = path.parent / video.external_file[0]
        reader = imageio.get_reader(str(mp4))
        try:
            frames = reader.count_frames()
        finally:
            reader.close()
        assert frames == scores["frames"] == len(video.timestamps) == sum(n + 1 for n in lengths)
        assert video.timestamps[:] == pytest.approx(np.concatenate([s + np.arange(n + 1) * dt
                                                                    for s, n in zip(starts, lengths)]))
        twin = nwb.processing["agent_untrained"] if control else None
        return ({name: agent[name].data[:] for name in agent.data_interfaces},
                {"actuator_ctrl": behavior["actuator_ctrl"].data[:],
                 "ctrl_range": np.asarray(json.loads(behavior["actuator_ctrl"].comments)["ctrl_range"])},
                twin and {name: twin[name].data[:] for name in twin.data_interfaces})


def test_ball_records_every_step_aligned_with_video_json_and_actuators(ball_run, tmp_path):
    out = tmp_path / "ball.mp4"
    scores = _evaluate(ball_run, out, "--record", "--record-control")
    path = out.with_suffix(".nwb")
    assert scores["recording"]["path"] == str(path) and scores["recording"]["bytes"] == path.stat().st_size
    agent, body, control = _check_file(path, scores, every=1, control=True)
    # The action chosen at step t is the control in force at step t+1 (ball: action repeat 1), scaled to the range.
    n = scores["per_episode"][0]["length"]
    low, high = body["ctrl_range"][:, 0], body["ctrl_range"][:, 1]
    assert body["actuator_ctrl"][1 : n + 1] == pytest.approx(low + (agent["action"][:n] + 1) / 2 * (high - low), abs=1e-5)
    assert np.all(body["actuator_ctrl"][0] == 0)
    # No update has been made, so the untrained twin (same config, same seed) is the same network on the same
    # inputs: it reproduces the agent's state exactly, which shows it was fed the same observations and actions.
    assert np.allclose(control["deter"], agent["deter"], atol=1e-5)
    assert np.allclose(control["value"], agent["value"], atol=1e-5)
    assert not list(tmp_path.glob(".*spool")) and not list(tmp_path.glob(".*.tmp.nwb"))


def test_recording_leaves_the_stochastic_actions_as_they_were(ball_run, tmp_path):
    """Each policy call draws noise: --record must not add or drop one (3 episodes: a drift shows from the 2nd)."""
    plain = _evaluate(ball_run, tmp_path / "plain.mp4", "--stochastic", "--episodes", "3")
    recorded = _evaluate(ball_run, tmp_path / "rec.mp4", "--stochastic", "--episodes", "3", "--record")
    assert [e["return"] for e in plain["per_episode"]] == [e["return"] for e in recorded["per_episode"]]
    assert plain["per_episode"][0]["return"] != plain["per_episode"][1]["return"]


def test_rat_records_one_step_in_n_to_a_chosen_path(rat_run, tmp_path):
    out = tmp_path / "rat.mp4"
    path = tmp_path / "sub" / "rat_recording.nwb"
    scores = _evaluate(rat_run, out, "--record", str(path), "--record-every", "3")
    assert scores["recording"]["record_every"] == 3 and path.exists()
    _check_file(path, scores, every=3)
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        joints = _columns(nwb.processing["behavior"]["joint_angle"])
        assert len(joints) > 30 and all(j.startswith("walker/") for j in joints)  # the rat's named joints
        assert nwb.subject.species == "Rattus norvegicus" and "rodent_goto" in nwb.session_description
        assert "agent:" in nwb.notes  # the run's config as YAML


def test_interrupted_recording_leaves_nothing(ball_run, tmp_path, monkeypatch):
    from dreamer_rodent import recording

    def stop(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recording.Recorder, "end_episode", stop)
    out = tmp_path / "cut.mp4"
    code = evaluation.main(["--checkpoint", str(ball_run), "--episodes", "2", "--size", "64x48",
                            "--env.time_limit", TIME_LIMIT, "--out", str(out), "--record"])
    assert code == 130
    assert not out.with_suffix(".nwb").exists() and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("flags, needle", [
    (["--record-every", "2"], "add --record"),
    (["--record-control"], "add --record"),
    (["--record", "x.h5"], "must end in .nwb"),
    (["--record", "--record-every", "0"], "--record-every must be >= 1"),
])
def test_bad_record_flags_name_the_fix(ball_run, tmp_path, capsys, flags, needle):
    code = evaluation.main(["--checkpoint", str(ball_run), "--out", str(tmp_path / "x.mp4"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and needle in err and "Traceback" not in err


def test_probe_recovers_a_linear_readout_and_not_noise():
    latents = _latents()
    rng = np.random.default_rng(0)
    episodes = np.repeat(np.arange(10), 50)
    x = rng.normal(size=(500, 8))
    readout = x @ rng.normal(size=(8, 2)) + 0.1 * rng.normal(size=(500, 2))
    assert latents.probe(x, readout, episodes) > 0.95
    assert latents.probe(x, rng.normal(size=(500, 1)), episodes) < 0.05  # held out: noise is not predicted
    with pytest.raises(ValueError, match="at least 2"):
        latents.probe(x, readout, np.zeros(500, int))


def test_probe_table_and_plot_from_a_recording(ball_run, tmp_path, capsys):
    out = tmp_path / "probe.mp4"
    _evaluate(ball_run, out, "--record", "--record-control")
    latents = _latents()
    assert latents.main([str(out.with_suffix(".nwb")), "--out", str(tmp_path / "probes")]) == 0
    rows = (tmp_path / "probes" / "probes.csv").read_text().splitlines()
    assert rows[0] == "target,group,units,samples,r2,r2_untrained"
    table = {tuple(r.split(",")[:2]) for r in rows[1:]}
    groups = {"deter", "stoch", "embed_image", "embed_vestibular", "embed_proprio", "embed_task"}
    assert table == {(t, g) for t in ("head_speed", "heading_to_target", "joint_angles") for g in groups}
    assert all(r.split(",")[5] for r in rows[1:])  # the untrained control's R^2 beside each
    from PIL import Image

    assert Image.open(tmp_path / "probes" / "probes.png").size[0] > 300
    assert "R^2 trained" in capsys.readouterr().out
    assert latents.main([str(tmp_path / "missing.nwb")]) == 2
    (tmp_path / "not_nwb.nwb").write_text("not an HDF5 file")
    assert latents.main([str(tmp_path / "not_nwb.nwb")]) == 2
    assert "error: cannot read the recording" in capsys.readouterr().err


def test_a_directory_or_unwritable_place_is_a_clear_error(ball_run, tmp_path, capsys):
    (tmp_path / "taken.nwb").mkdir()
    for target in (tmp_path / "taken.nwb", pathlib.Path("/proc/no_such_dir/x.nwb")):
        code = evaluation.main(["--checkpoint", str(ball_run), "--episodes", "1", "--env.time_limit", TIME_LIMIT,
                                "--out", str(tmp_path / "x.mp4"), "--record", str(target)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: --record") and "Traceback" not in err

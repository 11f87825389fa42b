"""End-to-end training with the real env (ball_goto) and the real agent (debug preset).

Runs `python -m dreamer_rodent.train` as a user would (subprocesses, signals,
the same run directory twice) and checks what lands in the run directory.
"""

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dreamer_rodent.train import main

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Short episodes so that a few hundred steps finish several of them.
FAST = ["--task", "ball_goto", "--configs", "debug", "--env.time_limit", "1.0", "--run.progress", "false"]


def _env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _run(args, timeout=600, **env):  # a guard against a hang, not a speed test
    return subprocess.run([sys.executable, "-m", "dreamer_rodent.train", *args], cwd=ROOT, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def _events(rundir):
    """Scalar and image (video) tags as TensorBoard itself reads them (installed with the project)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(rundir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags["scalars"]}
    return scalars, set(tags["images"])


def _tree_digest(path):
    """Every file under `path` with its sha256, to prove a failed command changed nothing."""
    out = {}
    for file in sorted(pathlib.Path(path).rglob("*")):
        if file.is_file():
            out[str(file.relative_to(path))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    rundir = tmp_path_factory.mktemp("runs") / "tiny"
    start = time.monotonic()
    result = _run([*FAST, "--logdir", str(rundir), "--run.steps", "300", "--run.log_every", "1",
                   "--run.video_every", "3", "--run.progress", "true"])
    return rundir, result, time.monotonic() - start


def test_tiny_run_writes_checkpoint_metrics_and_tensorboard(finished_run):
    rundir, result, _ = finished_run
    assert result.returncode == 0, result.stderr[-3000:]
    # No bound on `seconds`: on a loaded machine the same run took 35 s once and 131 s the next time (issue 15).
    assert f"Run directory: {rundir}" in result.stdout
    assert f"tensorboard --logdir {rundir}" in result.stdout
    assert "Finished 300 env steps" in result.stdout
    # Batch logs (no TTY) get plain status lines; they must show the policy's rate, not the just-reset counter.
    status = [line for line in result.stdout.splitlines() if "steps/s" in line and "policy_fps" in line]
    after_prefill = [line for line in status if int(line.split()[1].split("/")[0]) > 64]
    assert after_prefill and all(float(line.split("policy_fps")[1].split("|")[0]) > 0 for line in after_prefill), status

    assert (rundir / "config.yaml").exists()
    latest = (rundir / "checkpoints" / "latest").read_text().strip()
    assert latest == "ckpt_000000300"
    state = json.loads((rundir / "checkpoints" / latest / "state.json").read_text())
    assert state["counters"]["env_steps"] == 300
    # (300 - 64 prefill) env steps * train ratio 32 / (4 x 16 replayed steps per update)
    assert state["counters"]["train_steps"] == int(np.ceil((300 - 64) * 32 / 64))

    lines = [json.loads(line) for line in (rundir / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in line for line in lines)
    keys = set().union(*lines)
    for key in ["episode/score", "episode/length", "episode/success", "curriculum/level", "fps/policy",
                "fps/train", "replay/size", "replay/bytes", "train/loss/total", "train/loss/world_model", "env/restarts"]:
        assert key in keys, key
    assert all(line.get("env/restarts", 0) == 0 for line in lines)  # no env worker died in this run
    assert lines[-1]["step"] == 300 or lines[-2]["step"] == 300

    scalars, images = _events(rundir)
    for tag in ["episode/score", "episode/length", "episode/success", "curriculum/level", "fps/policy", "fps/train",
                "replay/size", "replay/bytes", "train/loss/total", "train/loss/rec_image", "train/loss/dyn"]:
        assert tag in scalars, tag
    assert all(np.isfinite(v) for _, v in scalars["train/loss/total"])
    assert {"rollout/image", "report/openloop/image"} <= images  # open-loop videos beside their report/ scalars
    assert any(p.suffix == ".mp4" for p in (rundir / "videos").iterdir())


def _wait_for(predicate, timeout, proc=None, what=""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _latest_step(rundir):
    pointer = rundir / "checkpoints" / "latest"
    return int(pointer.read_text().strip().split("_")[1]) if pointer.exists() else 0


def test_sigkill_then_resume_keeps_step_curriculum_and_replay_and_sigterm_saves(tmp_path):
    rundir = tmp_path / "killed"
    # A huge success radius: every episode succeeds, so the curriculum climbs one level per episode.
    args = [*FAST, "--logdir", str(rundir), "--run.steps", "1e6", "--run.save_every", "1",
            "--task_kwargs.success_radius", "1.0", "--task_kwargs.curriculum_window", "1",
            "--task_kwargs.curriculum_threshold", "0.5"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dreamer_rodent.train", *args], cwd=ROOT, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _latest_step(rundir) >= 220, 300, proc, "a checkpoint past step 220")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    from dreamer_rodent import checkpoint as ckpt

    saved = ckpt.Checkpointer(rundir).load_latest(arrays=False)
    levels = [s["level"] for s in saved.state["curriculum"]]
    assert max(levels) >= 1, levels  # the curriculum moved, so restoring it is observable
    replay_steps = sum(e["size"] for e in saved.replay["chunks"])

    out = open(tmp_path / "second.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dreamer_rodent.train", *args], cwd=ROOT, env=_env(),
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        text = lambda: (tmp_path / "second.log").read_text()
        _wait_for(lambda: "Resumed from" in text(), 120, proc, "the resume message")
        line = next(x for x in text().splitlines() if x.startswith("Resumed from"))
        assert f"Resumed from {saved.path} at env step {saved.step} " in line
        assert f"replay {replay_steps} steps" in line
        assert f"curriculum levels {levels}" in line
        # Let it train past the resume point, then ask it to stop.
        _wait_for(lambda: _latest_step(rundir) > saved.step + 20, 120, proc, "a checkpoint after the resume")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = [x for x in text().splitlines() if x.startswith("Stopped by SIGTERM at env step")]
    assert stopped, text()[-3000:]
    step = int(stopped[0].split("env step ")[1].split(";")[0])
    final = ckpt.load(rundir / "checkpoints" / f"ckpt_{step:09d}", arrays=False)
    assert final.state["counters"]["env_steps"] == step > saved.step
    assert all(s["level"] >= old for s, old in zip(final.state["curriculum"], levels))
    assert sum(e["size"] for e in final.replay["chunks"]) == min(step, 10_000)
    assert not any(".tmp" in p.name for p in (rundir / "checkpoints").iterdir())


def test_unknown_task_fails_before_writing(tmp_path, capsys):
    rundir = tmp_path / "run"
    assert main(["--task", "ball_gotoo", "--configs", "debug", "--logdir", str(rundir)]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'ball_gotoo'. Did you mean 'ball_goto'?" in err
    assert not rundir.exists()


def test_unwritable_logdir_is_reported(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main([*FAST, "--logdir", str(blocker / "run")]) == 2
    assert f"{blocker} is a file, not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "not a directory"
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main([*FAST, "--logdir", str(locked / "run")]) == 2
        assert "is not writable" in capsys.readouterr().err


def test_mismatched_checkpoint_names_keys_and_changes_nothing(finished_run, capsys):
    rundir, result, _ = finished_run
    assert result.returncode == 0
    before = _tree_digest(rundir)
    assert main([*FAST, "--logdir", str(rundir), "--agent.rssm.deter", "48", "--env.image_size", "32"]) == 2
    err = capsys.readouterr().err
    assert "agent.rssm.deter: checkpoint 32, now 48" in err
    assert "env.image_size: checkpoint 16, now 32" in err
    assert "another --logdir" in err
    assert _tree_digest(rundir) == before


def test_batch_not_divisible_by_devices(tmp_path):
    rundir = tmp_path / "run"
    result = _run([*FAST, "--logdir", str(rundir), "--batch_size", "6"], timeout=60,
                  XLA_FLAGS="--xla_force_host_platform_device_count=4")
    assert result.returncode == 2
    assert "batch_size=6 does not divide over 4 devices" in result.stderr
    assert "--batch_size 4 or 8" in result.stderr
    assert not rundir.exists()


MESH_CHECK = textwrap.dedent("""
    import numpy as np
    from dreamer_rodent.config import build_config
    from dreamer_rodent import distributed
    from dreamer_rodent.driver import Driver, agent_obs
    from dreamer_rodent.replay import Replay

    if __name__ == "__main__":
        config = build_config(["debug"], {"env.time_limit": 1.0, "run.env_parallel": "none"})
        distributed.setup(config)
        meshes = {n: distributed.make_mesh(config.update({"jax.devices": n})) for n in (1, 4)}
        assert meshes[4].devices.size == 4 and meshes[1].devices.size == 1
        from dreamer_rodent.parallel import BatchEnv
        from dreamer_rodent.agent import Agent
        envs = BatchEnv(config)
        driver, replay = Driver(envs, seed=0), Replay(16, 1000, 64, seed=0)
        for _ in range(40):
            transition, _ = driver.step(driver.random_actions)
            replay.add_batch(agent_obs(transition))
        batch = replay.sample(4)
        obs_space = {k: v for k, v in envs.obs_space.items() if not k.startswith("log/")}
        act_space = {"action": envs.act_space["action"]}
        for n, mesh in meshes.items():
            agent = Agent(obs_space, act_space, config, mesh=mesh)
            _, metrics = agent.train(agent.init_train(4), batch)
            print(f"LOSS {n} {metrics['loss/total']:.8f} {metrics['loss/world_model']:.8f}")
        envs.close()
""")


def test_same_train_step_on_four_devices_as_on_one(tmp_path):
    script = tmp_path / "mesh_check.py"
    script.write_text(MESH_CHECK)
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=400,
                            env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = {int(x.split()[1]): [float(v) for v in x.split()[2:]] for x in result.stdout.splitlines()
              if x.startswith("LOSS")}
    assert set(losses) == {1, 4}
    np.testing.assert_allclose(losses[4], losses[1], rtol=1e-4)


def test_warm_start_takes_weights_only(finished_run, tmp_path, capsys):
    source, result, _ = finished_run
    assert result.returncode == 0
    rundir = tmp_path / "warm"
    # run.steps == prefill: no update happens, so the new checkpoint must hold exactly the source weights.
    assert main([*FAST, "--logdir", str(rundir), "--run.steps", "64", "--run.from_checkpoint", str(source)]) == 0
    out = capsys.readouterr().out
    assert f"Warm start: agent weights from {source / 'checkpoints' / 'ckpt_000000300'}" in out
    from dreamer_rodent import checkpoint as ckpt

    old, new = ckpt.load(source), ckpt.load(rundir)
    assert new.state["counters"]["env_steps"] == 64 and new.state["counters"]["train_steps"] == 0
    assert old.arrays.keys() == new.arrays.keys()
    for key in old.arrays:
        np.testing.assert_array_equal(old.arrays[key], new.arrays[key], err_msg=key)
    bad = tmp_path / "bad"
    assert main([*FAST, "--logdir", str(bad), "--agent.units", "24", "--run.from_checkpoint", str(source)]) == 2
    assert "do not fit this config" in capsys.readouterr().err
    assert not bad.exists()  # the failed start leaves no half-made run directory


def test_multihost_settings_from_config_or_slurm():
    from dreamer_rodent import distributed
    from dreamer_rodent.config import ConfigError, build_config

    single = build_config(["debug"])
    assert distributed.multihost_settings(single, {}) is None
    assert distributed.multihost_settings(single, {"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    slurm = {"SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_JOB_NODELIST": "gpu[07-10],cpu1"}
    assert distributed.multihost_settings(single, slurm) == distributed.MultiHost("gpu07:12355", 4, 2, "SLURM")
    flags = build_config(["debug"], {"jax.num_processes": 2, "jax.process_id": 1, "jax.coordinator": "h0:999"})
    assert distributed.multihost_settings(flags, slurm) == distributed.MultiHost("h0:999", 2, 1, "config")
    with pytest.raises(ConfigError, match="needs --jax.coordinator"):
        distributed.multihost_settings(build_config(["debug"], {"jax.num_processes": 2}), {})
    with pytest.raises(ConfigError, match=r"jax.process_id must be in \[0, 2\)"):
        distributed.multihost_settings(
            build_config(["debug"], {"jax.num_processes": 2, "jax.process_id": 2, "jax.coordinator": "h:1"}), {})


def test_nonfinite_updates_are_undone_then_stop_with_last_good_checkpoint(tmp_path, capsys):
    rundir = tmp_path / "exploding"
    # A learning rate of 1e30 overflows the parameters on the first update.
    code = main([*FAST, "--logdir", str(rundir), "--run.steps", "400", "--agent.opt.lr", "1e30",
                 "--run.max_nonfinite", "2", "--run.save_every", "1e6"])
    captured = capsys.readouterr()
    assert code == 2
    assert "non-finite loss at train step 1 (1 in a row); the update was undone" in captured.out
    assert "2 consecutive updates had a non-finite loss (run.max_nonfinite=2)" in captured.err
    from dreamer_rodent import checkpoint as ckpt

    saved = ckpt.load(rundir)
    assert saved.state["counters"]["train_steps"] == 2
    assert saved.step < 400
    for key, value in saved.arrays.items():
        if np.issubdtype(value.dtype, np.floating):
            assert np.all(np.isfinite(value)), key


def test_env_failure_mid_run_saves_before_stopping(tmp_path, capsys, monkeypatch):
    from dreamer_rodent import train as train_module
    from dreamer_rodent.parallel import EnvWorkerError

    real_step = train_module.Driver.step
    calls = {"n": 0}

    def failing_step(self, policy):
        calls["n"] += 1
        if calls["n"] > 60:  # 120 env steps, past the prefill: training has started
            raise EnvWorkerError(1, "its process (pid 1234) exited with signal 9")
        return real_step(self, policy)

    monkeypatch.setattr(train_module.Driver, "step", failing_step)
    rundir = tmp_path / "crash"
    assert main([*FAST, "--logdir", str(rundir), "--run.steps", "1000", "--run.save_every", "1e6"]) == 2
    captured = capsys.readouterr()
    assert "env worker 1 failed" in captured.err
    assert "at env step 120 before stopping on EnvWorkerError" in captured.out
    from dreamer_rodent import checkpoint as ckpt

    saved = ckpt.load(rundir)
    assert saved.step == 120 and saved.state["counters"]["train_steps"] > 0


def test_replay_that_cannot_fit_in_ram_is_refused(tmp_path, capsys):
    rundir = tmp_path / "huge"
    assert main([*FAST, "--logdir", str(rundir), "--replay.capacity", "1e11", "--run.steps", "1e11"]) == 2
    err = capsys.readouterr().err
    assert "replay.capacity=100,000,000,000 steps" in err and "GiB of RAM. Use --replay.capacity" in err
    assert not rundir.exists()


def test_second_trainer_on_the_same_run_is_refused(tmp_path, capsys):
    from dreamer_rodent.train import RunLock

    rundir = tmp_path / "busy"
    rundir.mkdir()
    holder = RunLock(rundir)  # what a running trainer holds
    try:
        assert main([*FAST, "--logdir", str(rundir)]) == 2
        assert "another training process is using" in capsys.readouterr().err
        assert sorted(p.name for p in rundir.iterdir()) == [".lock"]
    finally:
        holder.release()


def test_image_size_that_the_cnn_cannot_halve_is_a_config_error(tmp_path, capsys):
    rundir = tmp_path / "run"
    assert main([*FAST, "--logdir", str(rundir), "--env.image_size", "24"]) == 2
    err = capsys.readouterr().err
    assert "env.image_size=24" in err and "divisible by 16" in err and "--env.image_size 16 or 32" in err
    assert "Traceback" not in err
    assert not rundir.exists()


@pytest.mark.parametrize("flags,words", [
    (["--agent.actor_grad", "foo"], "agent.actor_grad is 'foo': use one of backprop, reinforce."),
    (["--agent.imag_last", "1"], "agent.imag_last is 1: use 0"),
    (["--agent.rssm.deter", "31"], "agent.rssm.deter (31) must divide by agent.rssm.blocks (2)."),
])
def test_agent_settings_no_obs_space_can_fix_are_error_lines_before_anything_starts(tmp_path, capsys, flags, words):
    rundir = tmp_path / "run"
    assert main([*FAST, "--logdir", str(rundir), *flags]) == 2  # was a traceback from inside the agent, exit 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1
    assert not rundir.exists()


def test_image_size_beyond_the_framebuffer_is_a_config_error(tmp_path, capsys):
    rundir = tmp_path / "run"
    assert main([*FAST, "--logdir", str(rundir), "--env.image_size", "4096"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: env.image_size=4096 is larger than the offscreen framebuffer") and "1024" in err
    assert "--env.image_size 1024 or less" in err and "Traceback" not in err
    assert not rundir.exists()


def test_train_ratio_counts_this_hosts_share_of_the_global_batch():
    """Each host replays batch_size / hosts of its own sequences per update; the ratio is per host env step."""
    import types

    import jax

    from dreamer_rodent.train import replayed_per_update

    one = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    assert replayed_per_update(16, 64, one) == 16 * 64
    assert replayed_per_update(16, 64, None) == 16 * 64
    two_hosts = types.SimpleNamespace(devices=np.zeros((8,)), local_devices=[0, 1, 2, 3])
    assert replayed_per_update(16, 64, two_hosts) == 8 * 64


def test_train_carry_with_uniform_replay_is_refused(tmp_path, capsys):
    rundir = tmp_path / "run"
    assert main([*FAST, "--logdir", str(rundir), "--run.steps", "80", "--agent.train_carry", "true"]) == 2
    assert "agent.train_carry" in capsys.readouterr().err
    assert not rundir.exists()


def test_resume_reseeds_the_envs_from_the_step_reached(tmp_path):
    """Without it every resume replays the random draws (spawns, targets) of the run's first episodes."""
    from dreamer_rodent import distributed
    from dreamer_rodent.config import parse_args
    from dreamer_rodent.train import Trainer, resume_env_seeds

    rundir = tmp_path / "run"
    args = [*FAST, "--logdir", str(rundir), "--run.steps", "80", "--run.env_parallel", "none"]
    assert main(args) == 0
    config, _ = parse_args(args)
    config = config.update({"logdir": str(rundir)})
    trainer = Trainer(config, rundir, distributed.make_mesh(config), resume_from=rundir, say=lambda *a: None)
    try:
        step = trainer.counters["env_steps"]
        assert step >= 80
        seeds = [env.seed for env in trainer.envs._envs]
        assert seeds == resume_env_seeds(int(config.seed), step, len(seeds))
        assert len(set(seeds)) == len(seeds) and seeds != [0, 1]
    finally:
        trainer.close()


def test_hosts_other_than_the_first_draw_their_own_episodes(tmp_path):
    """On several hosts each builds envs with the same local indices; all but host 0 reseed them."""
    from dreamer_rodent import distributed
    from dreamer_rodent.config import parse_args
    from dreamer_rodent.train import Trainer, resume_env_seeds

    config, _ = parse_args([*FAST, "--logdir", str(tmp_path / "run"), "--run.env_parallel", "none"])
    mesh = distributed.make_mesh(config)
    trainer = Trainer(config, tmp_path / "run", mesh, process_index=1, say=lambda *a: None)
    try:
        seeds = [env.seed for env in trainer.envs._envs]
        assert seeds == resume_env_seeds(int(config.seed), 0, len(seeds), 1)
        key1 = trainer.agent.save()["policy_key"]
    finally:
        trainer.close()
    (tmp_path / "run0").mkdir()
    first = Trainer(config, tmp_path / "run0", mesh, process_index=0, say=lambda *a: None)
    try:
        assert [env.seed for env in first.envs._envs] == [0, 1]  # host 0 of a new run keeps the run's seeds
        key0 = first.agent.save()["policy_key"]
    finally:
        first.close()
    assert not np.array_equal(key0, key1)  # nor the same action noise


def test_bad_env_keys_and_camera_are_errors_not_tracebacks(tmp_path, capsys):
    rundir = tmp_path / "run"
    args = [*FAST, "--logdir", str(rundir), "--run.steps", "80", "--run.env_parallel", "none"]
    assert main([*args, "--env.keys", "image,tsk"]) == 2
    err = capsys.readouterr().err
    assert "env.keys has unknown group(s) ['tsk']" in err and "Traceback" not in err
    assert not rundir.exists()
    assert main([*args, "--env.camera", "egocentrc"]) == 2
    err = capsys.readouterr().err
    assert "egocentrc" in err and "Traceback" not in err
    assert not rundir.exists()


def test_platform_auto_is_the_default_and_picks_a_usable_device():
    """`auto` leaves the backend to JAX (a GPU where a CUDA jaxlib sees one): here the CPU."""
    from dreamer_rodent import distributed
    from dreamer_rodent.config import ConfigError, build_config

    config = build_config([], {})
    assert config.jax.platform == "auto"
    devices = distributed.local_devices(config)
    assert devices and devices[0].platform == "cpu"
    with pytest.raises(ConfigError, match="jax.platform must be one of auto, cpu, gpu, tpu"):
        distributed.setup(build_config([], {"jax.platform": "gpus"}))


def test_resume_skips_a_checkpoint_whose_agent_npz_is_a_pickle(tmp_path, capsys):
    """The manifest matches, but agent.npz does not parse: resume warns, moves it aside and uses the one before;
    with no good one left it is one error line."""
    import pickle

    from dreamer_rodent import checkpoint as ckpt
    from dreamer_rodent.config import Config

    rundir = tmp_path / "run"
    args = [*FAST, "--logdir", str(rundir), "--run.steps", "20", "--run.prefill", "20", "--run.envs", "1",
            "--run.env_parallel", "none", "--logging.tensorboard", "false"]
    assert main(args) == 0
    good = ckpt.load(rundir)
    state = dict(good.state, counters={**good.state["counters"], "env_steps": 40})
    bad = ckpt.Checkpointer(rundir).save(40, good.arrays, state, Config.load(good.path / "config.yaml"))

    def pickled(path):
        (path / "agent.npz").write_bytes(pickle.dumps(good.arrays))
        manifest = json.loads((path / "MANIFEST.json").read_text())
        manifest["files"]["agent.npz"] = {"bytes": (path / "agent.npz").stat().st_size,
                                          "sha256": ckpt.file_digest(path / "agent.npz")}
        (path / "MANIFEST.json").write_text(json.dumps(manifest))

    pickled(bad)
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: checkpoint")]
    assert len(warnings) == 1, captured.err
    assert warnings[0].startswith(f"warning: checkpoint {bad} is corrupt: agent.npz matches its sha256 in the "
                                  "manifest but is not a numpy .npz archive of arrays (it is a Python pickle, "
                                  "which checkpoints never load)")
    assert f"moved to {bad}.corrupt. Falling back to the previous checkpoint." in warnings[0]
    assert f"Resumed from {good.path} at env step 20 " in captured.out
    assert "Traceback" not in captured.err
    pickled(good.path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\nerror: ") + err.startswith("error: ") == 1 and "Traceback" not in err
    assert f"error: no complete checkpoint in {rundir / 'checkpoints'}: checkpoint {good.path} is corrupt: agent.npz" in err
    assert (rundir / "checkpoints" / "ckpt_000000020.corrupt" / "agent.npz").exists()  # kept, not deleted


def test_a_full_disk_stops_the_run_with_one_error_line_and_nothing_half_written(tmp_path, capsys, monkeypatch):
    from conftest import FullDisk

    from dreamer_rodent import checkpoint as ckpt
    from dreamer_rodent import logger as logger_module
    from dreamer_rodent import replay as replay_module

    # The disk fills while the final checkpoint is written (metrics.jsonl still fits)...
    rundir = tmp_path / "full_at_save"
    disk = FullDisk(2000)
    for module in (ckpt, replay_module):
        monkeypatch.setattr(module, "open", disk.open, raising=False)
    assert main([*FAST, "--logdir", str(rundir), "--run.steps", "100", "--run.prefill", "100", "--run.envs", "1"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"the disk holding {rundir} is full" in errors[0] and "checkpoint ckpt_000000100" in errors[0]
    assert "No checkpoint of this run was complete yet" in errors[0] and "rerun the same command" in errors[0]
    assert not [p for p in rundir.rglob("*") if ".tmp" in p.name]
    monkeypatch.undo()

    # ... or while a log line is written.
    rundir = tmp_path / "full_at_log"
    monkeypatch.setattr(logger_module, "open", FullDisk(0).open, raising=False)
    assert main([*FAST, "--logdir", str(rundir), "--run.steps", "100", "--run.prefill", "100", "--run.envs", "1"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "while writing " + str(rundir / "metrics.jsonl") in errors[0]


STOP_SCRIPT = textwrap.dedent("""
    import signal, sys, time
    from dreamer_rodent.train import Interrupted, StopSignals
    from dreamer_rodent.logger import Phase

    stop = StopSignals(grace=1.0)
    stop.on_hard_exit = lambda: print("cleanup ran", flush=True)
    with stop:
        try:
            with Phase("Working", watch=stop.set_phase, every=0):
                if sys.argv[1] == "c":
                    # Like a long XLA compile: the signal's C-level handler wakes the watcher through the wakeup
                    # fd, but the Python handler never gets to run (here: no signal at all, only its wakeup byte).
                    print("ready", flush=True)
                    import os

                    os.write(stop._pipe[1], bytes([signal.SIGTERM]))
                    time.sleep(120)
                else:
                    print("ready", flush=True)
                    time.sleep(120)
            print("finished the phase", flush=True)
        except Interrupted as stopped:
            print(f"interrupted by {stopped.signame} in {stopped.phase}", flush=True)
            sys.exit(7)
""")


@pytest.mark.parametrize("mode", ["python", "c"])
def test_a_signal_during_a_start_up_phase_stops_it_in_python_code_and_in_a_c_call(mode, tmp_path):
    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), mode], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "Working..."
    assert proc.stdout.readline().strip() == "ready"
    if mode == "python":
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=100)  # a guard against a hang; the phase itself lasts 120 s
    assert "finished the phase" not in out
    if mode == "python":  # the handler raised out of the sleep
        assert proc.returncode == 7 and "interrupted by SIGTERM in Working" in out, (out, err)
    else:  # no Python ran: the watcher thread ended the process
        assert proc.returncode == 128 + signal.SIGTERM, (out, err)
        assert "cleanup ran" in out and "Stopped by SIGTERM while: Working" in err


def test_sigterm_while_the_train_step_compiles_stops_at_once_and_keeps_the_prefill(tmp_path):
    rundir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "dreamer_rodent.train", *FAST, "--logdir", str(rundir),
                             "--run.steps", "1000"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Compiling the train step"):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    out = "".join(lines) + out
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "Stopped by SIGTERM while: Compiling the train step" in err and "Traceback" not in err
    assert "First update: done" not in out
    from dreamer_rodent import checkpoint as ckpt

    saved = ckpt.load(rundir)  # written before the first compile: the random prefill is not lost
    assert saved.state["counters"]["train_steps"] == 0 and saved.step >= 64
    for phase in ("Building 2 envs of ball_goto", "Building the agent", "Collecting 64 random-action prefill steps",
                  "Compiling the policy"):
        assert phase in out, phase


class _Built(Exception):
    """Raised by a stand-in Trainer: the config train() built, without building envs."""


def _config_train_builds(argv, monkeypatch, capsys):
    from dreamer_rodent import train as train_module

    def capture(config, *args, **kwargs):
        raise _Built(config)

    monkeypatch.setattr(train_module, "Trainer", capture)
    with pytest.raises(_Built) as built:
        train_module.train(argv)
    return built.value.args[0], capsys.readouterr().out


def test_on_a_cpu_the_headline_command_trains_the_cpu_preset_and_says_so(tmp_path, monkeypatch, capsys):
    from dreamer_rodent.config import build_config

    config, out = _config_train_builds(["--task", "rodent_goto", "--logdir", str(tmp_path / "a")], monkeypatch, capsys)
    assert config.agent.rssm.deter == build_config(["cpu_small"]).agent.rssm.deter
    assert "'cpu_small' preset (jax.cpu_preset)" in out
    config, out = _config_train_builds(["--task", "rodent_goto", "--logdir", str(tmp_path / "b"), "--jax.cpu_preset",
                                        ""], monkeypatch, capsys)
    assert config.agent.rssm.deter == 2048 and "cpu_preset" not in out.split("GPU")[0]


def test_a_resume_keeps_the_model_its_run_was_made_with_on_either_platform(tmp_path):
    from dreamer_rodent.config import parse_args
    from dreamer_rodent.train import choose_model_size

    argv = ["--task", "rodent_goto"]
    plain, _ = parse_args(argv)
    sized, note = choose_model_size(argv, plain, "cpu", None)
    assert sized.agent.rssm.deter != plain.agent.rssm.deter and note
    assert choose_model_size(argv, plain, "gpu", None) == (plain, None)
    # Made on a CPU with the preset, resumed on a GPU: the preset's model; made on a GPU (or before the preset
    # existed), resumed on a CPU: the paper's.
    config, note = choose_model_size(argv, plain, "gpu", sized)
    assert config == sized and "resumes with that model" in note
    assert choose_model_size(argv, plain, "cpu", plain) == (plain, None)


def test_a_run_whose_config_predates_a_new_agent_key_still_resumes(finished_run, capsys):
    """A key added to the defaults since (agent.imag_last here) takes its default on resume, not a mismatch."""
    from dreamer_rodent.config import Config
    from dreamer_rodent.train import find_resume

    rundir, result, _ = finished_run
    assert result.returncode == 0
    config = Config.load(rundir / "config.yaml")
    latest = rundir / "checkpoints" / (rundir / "checkpoints" / "latest").read_text().strip()
    old = config.to_dict()
    del old["agent"]["imag_last"]
    saved = latest / "config.yaml"
    original = saved.read_text()
    try:
        Config(old).save(saved)
        assert find_resume(rundir, config, 3) == latest
    finally:
        saved.write_text(original)


def test_a_resume_names_each_task_setting_that_changed_since_the_run_began():
    """A preset that changed since a run began (the rat's physics step, its posture weight) changes the task under
    a resumed run: the resume says so, with the flag that keeps the old setting."""
    from dreamer_rodent.config import build_config
    from dreamer_rodent.train import task_changes

    today = build_config(["rodent_goto", "cpu_small", "proprio_only"])
    before = today.update({"env.physics_timestep": 0.0, "task_kwargs.posture_weight": 1.0})
    notes = task_changes(before, today)
    assert len(notes) == 2, notes
    assert "env.physics_timestep=0.0 and resumes with 0.002" in notes[0] and "--env.physics_timestep 0.0" in notes[0]
    assert "task_kwargs.posture_weight=1.0" in notes[1] and "--task_kwargs.posture_weight 1.0" in notes[1]
    assert task_changes(today, today) == [] and task_changes(None, today) == []
    assert task_changes(today.update({"run.train_ratio": 8}), today) == []  # not the task: no note
    keys = task_changes(today.update({"env.keys": ["proprio", "task"]}), today)
    assert len(keys) == 1 and keys[0].endswith("--env.keys proprio task"), keys

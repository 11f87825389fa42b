"""The collector thread (run.collect_ahead): order, the bound on how far it runs ahead, borrowing the envs,
failures, and a real training run with it."""

import threading
import time

import numpy as np
import pytest

from dreamer_rodent.collector import Collector, CollectorError
from dreamer_rodent.train import main

FAST = ["--task", "ball_goto", "--configs", "debug", "--env.time_limit", "1.0", "--run.progress", "false"]


def _counting(delay=0.0):
    calls = {"n": 0, "done": 0}

    def collect():
        calls["n"] += 1
        if delay:
            time.sleep(delay)
        calls["done"] += 1
        return calls["n"]

    return calls, collect


def _wait_until(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_results_come_in_order_and_the_thread_runs_at_most_ahead_steps_in_advance():
    calls, collect = _counting()
    collector = Collector(collect, ahead=3)
    try:
        assert [collector.next(timeout=60) for _ in range(5)] == [1, 2, 3, 4, 5]
        # 5 taken, 3 queued, and one more made that waits for room: never more than that.
        _wait_until(lambda: calls["n"] >= 9)
        time.sleep(0.3)
        assert calls["n"] == 5 + 3 + 1 and collector.queued == 3
        assert collector.next(timeout=60) == 6
        _wait_until(lambda: calls["n"] >= 10)
        time.sleep(0.3)
        assert calls["n"] == 6 + 3 + 1
    finally:
        collector.close()
    assert not collector.alive


def test_paused_waits_for_the_step_in_flight_and_starts_no_new_one():
    calls, collect = _counting(delay=0.05)
    collector = Collector(collect, ahead=1000)
    try:
        _wait_until(lambda: calls["n"] >= 2)
        with collector.paused():
            frozen = calls["n"]
            assert calls["done"] == frozen  # the step in flight has finished before the block runs
            time.sleep(0.2)
            assert calls["n"] == frozen  # and none has started
        _wait_until(lambda: calls["n"] > frozen)  # it resumes after the block
    finally:
        collector.close()


def test_close_inside_paused_does_not_wait_forever():
    calls, collect = _counting(delay=0.01)
    collector = Collector(collect, ahead=1000)
    _wait_until(lambda: calls["n"] >= 1)
    with collector.paused():
        collector.close()
    assert not collector.alive


def test_a_failure_in_the_thread_is_raised_by_next_after_the_results_before_it():
    calls = {"n": 0}

    def collect():
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("worker 1 died")
        return calls["n"]

    collector = Collector(collect, ahead=8)
    assert collector.next(timeout=10) == 1
    assert collector.next(timeout=10) == 2
    with pytest.raises(ValueError, match="worker 1 died"):
        collector.next(timeout=10)
    collector.close()


def test_close_ends_the_thread_and_next_then_says_so():
    calls, collect = _counting(delay=0.005)
    collector = Collector(collect, ahead=2)
    collector.close()
    assert not collector.alive
    with pytest.raises(CollectorError):
        collector.next(timeout=1)
    with pytest.raises(ValueError):
        Collector(collect, ahead=0)


def test_policy_params_snapshot_survives_the_updates_that_donate_the_live_ones():
    from dreamer_rodent.agent import Agent
    from dreamer_rodent.config import build_config
    from dreamer_rodent.spaces import Space

    config = build_config(["debug"], {"agent.opt.lr": 1e-3, "agent.opt.warmup": 0, "agent.ac_opt.lr": 1e-3,
                                      "agent.ac_opt.warmup": 0})
    obs_space = {"proprio": Space((5,), np.float32), "is_first": Space((), bool)}
    act_space = {"action": Space((2,), np.float32, -1.0, 1.0)}
    agent = Agent(obs_space, act_space, config)
    snapshot = agent.policy_params()
    before = {k: np.asarray(v) for k, v in agent.save().items() if k.startswith("params/")}
    B, T = 4, 16
    rng = np.random.default_rng(0)
    batch = {"proprio": rng.normal(size=(B, T, 5)).astype(np.float32), "action": rng.uniform(-1, 1, (B, T, 2)),
             "reward": rng.normal(size=(B, T)).astype(np.float32), "is_first": np.zeros((B, T), bool),
             "is_last": np.zeros((B, T), bool), "is_terminal": np.zeros((B, T), bool)}
    carry = agent.init_train(B)
    for _ in range(2):
        carry, _ = agent.train(carry, batch)
    obs = {"proprio": np.ones((3, 5), np.float32), "is_first": np.ones(3, bool)}
    # The snapshot still acts (its buffers were not donated) and acts as the parameters it copied.
    _, old = agent.policy(agent.init_policy(3), obs, mode="eval", params=snapshot)
    after = {k: np.asarray(v) for k, v in agent.save().items() if k.startswith("params/")}
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # the updates moved the live ones
    fresh = Agent(obs_space, act_space, config)  # same seed: the initial parameters
    _, same = fresh.policy(fresh.init_policy(3), obs, mode="eval")
    np.testing.assert_allclose(old["action"], same["action"], rtol=1e-6, atol=1e-6)
    _, new = agent.policy(agent.init_policy(3), obs, mode="eval")
    assert not np.allclose(new["action"], old["action"])


@pytest.fixture
def collectors(monkeypatch):
    """The Collector instances a run makes (so a test sees that the thread really ran)."""
    from dreamer_rodent import train as train_module

    made = []

    class Spy(Collector):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(train_module, "Collector", Spy)
    return made


def test_a_run_with_the_collector_keeps_the_train_ratio_exact_and_resumes(tmp_path, capsys, collectors):
    from dreamer_rodent import checkpoint as ckpt

    rundir = tmp_path / "ahead"
    args = [*FAST, "--logdir", str(rundir), "--run.collect_ahead", "6", "--run.log_every", "1",
            "--run.save_every", "2", "--replay.context", "true"]
    assert main([*args, "--run.steps", "300"]) == 0
    saved = ckpt.load(rundir, arrays=False)
    counters = saved.state["counters"]
    assert counters["env_steps"] == 300
    # (300 - 64 prefill) env steps * train ratio 32 / (4 x 16 replayed steps per update), as without the thread
    assert counters["train_steps"] == int(np.ceil((300 - 64) * 32 / 64))
    assert sum(e["size"] for e in saved.replay["chunks"]) == 300  # every consumed step, none of the dropped ones
    assert len(collectors) == 1 and not collectors[0].alive
    assert not [t for t in threading.enumerate() if t.name == "collector"]
    assert main([*args, "--run.steps", "400"]) == 0
    assert len(collectors) == 2
    out = capsys.readouterr().out
    assert "Resumed from" in out and "Finished 400 env steps" in out
    saved = ckpt.load(rundir, arrays=False)
    assert saved.state["counters"]["train_steps"] == int(np.ceil((400 - 64) * 32 / 64))
    assert sum(e["size"] for e in saved.replay["chunks"]) == 400


def test_an_env_failure_on_the_collector_thread_saves_and_stops_as_in_the_loop(tmp_path, capsys, monkeypatch,
                                                                               collectors):
    from dreamer_rodent import checkpoint as ckpt
    from dreamer_rodent import train as train_module
    from dreamer_rodent.parallel import EnvWorkerError

    real_step = train_module.Driver.step
    calls = {"n": 0}

    def failing_step(self, policy):
        calls["n"] += 1
        if calls["n"] > 60:  # 120 env steps (2 envs), past the prefill: the collector thread is stepping
            raise EnvWorkerError(1, "its process (pid 1234) exited with signal 9")
        return real_step(self, policy)

    monkeypatch.setattr(train_module.Driver, "step", failing_step)
    rundir = tmp_path / "crash"
    assert main([*FAST, "--logdir", str(rundir), "--run.steps", "1000", "--run.save_every", "1e6",
                 "--run.collect_ahead", "4"]) == 2
    captured = capsys.readouterr()
    assert "env worker 1 failed" in captured.err
    assert "at env step 120 before stopping on EnvWorkerError" in captured.out
    assert ckpt.load(rundir).step == 120
    assert len(collectors) == 1 and not collectors[0].alive  # the failure came through the thread


def test_a_negative_collect_ahead_is_a_config_error(tmp_path, capsys):
    assert main([*FAST, "--logdir", str(tmp_path / "bad"), "--run.collect_ahead", "-1"]) == 2
    err = capsys.readouterr().err
    assert "run.collect_ahead" in err and ">= 0" in err
    assert not (tmp_path / "bad").exists()


def test_the_collector_with_several_hosts_is_refused_before_joining_them(tmp_path, capsys):
    # No coordinator listens at h:1: joining would hang, so the error must come first.
    assert main([*FAST, "--logdir", str(tmp_path / "hosts"), "--run.collect_ahead", "4", "--jax.num_processes", "2",
                 "--jax.process_id", "0", "--jax.coordinator", "h:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run.collect_ahead=4 is for one process; this run has 2") and err.count("\n") == 1


class _ThreadRecordingEnv:
    """Records the thread of every call made on it."""

    def __init__(self, config, index, threads):
        from dreamer_rodent.spaces import Space

        self.threads = threads
        self.threads.append(("init", threading.get_ident()))
        self.obs_space = {"proprio": Space((2,), np.float32), "reward": Space((), np.float32),
                          "is_first": Space((), bool), "is_last": Space((), bool), "is_terminal": Space((), bool)}
        self.act_space = {"action": Space((1,), np.float32, -1.0, 1.0), "reset": Space((), bool)}

    def step(self, action):
        self.threads.append(("step", threading.get_ident()))
        return {"proprio": np.zeros(2, np.float32), "reward": np.float32(0), "is_first": False, "is_last": False,
                "is_terminal": False}

    def curriculum_state(self):
        self.threads.append(("curriculum_state", threading.get_ident()))
        return None

    def close(self):
        self.threads.append(("close", threading.get_ident()))


@pytest.mark.parametrize("own_thread", [True, False])
def test_in_process_envs_with_their_own_thread_see_every_call_on_that_one_thread(own_thread):
    """MuJoCo's EGL context only renders on the thread that made it current: build, step and close alike."""
    from dreamer_rodent.config import build_config
    from dreamer_rodent.parallel import BatchEnv

    threads = []
    config = build_config(flags={"task": "ball_goto", "run.envs": 2, "run.env_parallel": "none"})
    env = BatchEnv(config, ctor=lambda c, i: _ThreadRecordingEnv(c, i, threads), own_thread=own_thread)
    actions = {"action": np.zeros((2, 1), np.float32), "reset": np.zeros(2, bool)}
    stepper = threading.Thread(target=lambda: env.step(actions))  # as the collector thread does
    stepper.start()
    stepper.join()
    env.step(actions)
    env.curriculum_states()
    env.close()
    kinds = [kind for kind, _ in threads]
    assert kinds.count("init") == 2 and kinds.count("step") == 4 and kinds.count("close") == 2
    idents = {ident for _, ident in threads}
    if own_thread:
        assert len(idents) == 1 and threading.get_ident() not in idents
    else:
        assert len(idents) == 2  # the caller's thread each time: this one and the stepper

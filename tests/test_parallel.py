"""BatchEnv: worker processes match in-process stepping; failures never hang.

Workers are real `ball_goto` envs (the cheap walker) at a tiny image size. The
env constructors used by the failure tests live at module level so that spawned
workers can import them.
"""

import os
import pathlib
import signal
import time

import numpy as np
import pytest

from dreamer_rodent.config import build_config
from dreamer_rodent.env import make_env
from dreamer_rodent.egl import select_egl_device
from dreamer_rodent.parallel import BatchEnv, EnvWorkerError


def _config(envs=2, **flags):
    return build_config(flags={"task": "ball_goto", "env.image_size": 8, "run.envs": envs, **flags})


def _actions(env, rng, reset=None):
    n = env.num
    action = rng.uniform(-1, 1, (n, *env.act_space["action"].shape)).astype(np.float32)
    return {"action": action, "reset": np.zeros(n, bool) if reset is None else np.asarray(reset)}


class _FailingEnv:
    """A real env that raises on its `fail_at`-th step in worker `fail_index`."""

    def __init__(self, config, index, fail_index, fail_at):
        self._env = make_env(config, index)
        self._fail = index == fail_index
        self._fail_at = fail_at
        self._steps = 0
        self.obs_space, self.act_space = self._env.obs_space, self._env.act_space

    def step(self, action):
        self._steps += 1
        if self._fail and self._steps == self._fail_at:
            raise FloatingPointError("simulated physics blow-up in the test env")
        return self._env.step(action)

    def close(self):
        self._env.close()


def failing_ctor(config, index):
    return _FailingEnv(config, index, fail_index=1, fail_at=3)


class _HangingEnv(_FailingEnv):
    """Hangs on its 2nd step in worker 0, once per marker file (restarts then behave)."""

    def __init__(self, config, index, marker):
        super().__init__(config, index, fail_index=0, fail_at=2)
        self._marker = pathlib.Path(marker)

    def step(self, action):
        self._steps += 1
        if self._fail and self._steps == self._fail_at and not self._marker.exists():
            self._marker.write_text("hung once")
            time.sleep(600)
        return self._env.step(action)


def hanging_ctor(config, index):
    return _HangingEnv(config, index, os.environ["TEST_PARALLEL_MARKER"])


def test_select_egl_device():
    # A pinned device wins over everything.
    assert select_egl_device(3, egl_device=1, cuda_visible_devices="0,2", gpu_count=4, preset="5") == "1"
    # A device the user exported is kept.
    assert select_egl_device(3, cuda_visible_devices="0,2", gpu_count=4, preset="5") == "5"
    # Round robin over the visible GPUs' ids.
    assert [select_egl_device(i, cuda_visible_devices="2,5,7") for i in range(4)] == ["2", "5", "7", "2"]
    assert [select_egl_device(i, gpu_count=2) for i in range(3)] == ["0", "1", "0"]
    # CUDA hidden, or no GPU at all: leave EGL's own choice (Mesa on a CPU machine).
    assert select_egl_device(1, cuda_visible_devices="", gpu_count=8) is None
    assert select_egl_device(1, cuda_visible_devices="-1", gpu_count=8) is None
    assert select_egl_device(1) is None
    # UUIDs cannot be mapped to EGL indices: fall back to positions.
    assert select_egl_device(3, cuda_visible_devices="GPU-aa,GPU-bb") == "1"


def test_processes_match_in_process_stepping():
    config = _config(envs=2)
    rng = np.random.default_rng(0)
    plan = [_actions_like(rng, reset=[i == 6, False]) for i in range(12)]
    outputs = {}
    for mode in ("process", "process-pipe", "none"):
        with BatchEnv(config, parallel=mode.split("-")[0], transport="pipe" if "pipe" in mode else "shm") as env:
            assert env.obs_space["image"].shape == (8, 8, 3)
            outputs[mode] = [env.step(step) for step in plan]
    for mode in ("process", "process-pipe"):
        for step, (a, b) in enumerate(zip(outputs[mode], outputs["none"])):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].shape[0] == 2
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{mode} step {step} key {key}")
    first = outputs["process"]
    assert first[0]["is_first"].all() and not first[1]["is_first"].any()
    assert list(first[6]["is_first"]) == [True, False]  # reset=True for env 0 at step 6
    assert not np.array_equal(first[3]["target"][0], first[3]["target"][1])  # envs are seeded apart


def test_too_little_shared_memory_falls_back_to_pipes(monkeypatch):
    from dreamer_rodent import parallel

    assert parallel.shm_shortfall(1) is None
    assert "--shm-size" in parallel.shm_shortfall(2**62)
    monkeypatch.setattr(parallel, "shm_shortfall", lambda needed: "only 1 byte free")
    with pytest.warns(UserWarning, match="only 1 byte free. Falling back to pipes"):
        env = BatchEnv(_config(envs=1))
    with env:
        obs = env.step(_actions(env, np.random.default_rng(0)))
        assert obs["is_first"].all() and obs["image"].shape == (1, 8, 8, 3)


def _actions_like(rng, reset):
    return {"action": rng.uniform(-1, 1, (2, 3)).astype(np.float32), "reset": np.asarray(reset)}


def test_killed_worker_is_restarted_and_its_episode_ends():
    rng = np.random.default_rng(1)
    with BatchEnv(_config(envs=2), step_timeout=60, max_restarts=1) as env:
        said = []
        env.say = said.append
        for _ in range(3):
            before = env.step(_actions(env, rng))
        states = env.curriculum_states()
        victim = env.worker_pids[1]
        assert env.restarts == 0
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        ended = env.step(_actions(env, rng))
        assert time.monotonic() - start < 60
        # One warning line: which worker, how it died, that it was restarted; and the count the trainer logs.
        assert said == [f"warning: env worker 1: its process (pid {victim}) was killed by SIGKILL while stepping; "
                        f"restarted it as pid {env.worker_pids[1]} (restart 1 of at most 1 for this worker); the "
                        "episode it was running was cut short."]
        assert env.restarts == 1
        assert list(ended["is_last"]) == [False, True]
        assert not ended["is_terminal"][1] and ended["reward"][1] == 0
        np.testing.assert_array_equal(ended["target"][1], before["target"][1])  # its last observation
        assert env.restart_log and env.restart_log[0][0] == 1 and "SIGKILL" in env.restart_log[0][1]
        assert env.worker_pids[1] != victim
        after = env.step(_actions(env, rng))  # reset=False, yet the restarted env starts anew
        assert list(after["is_first"]) == [False, True]
        assert env.curriculum_states()[1] == states[1]
        env.step(_actions(env, rng))
        # A second death is one more than max_restarts=1 allows: the run stops, naming the worker.
        os.kill(env.worker_pids[1], signal.SIGKILL)
        with pytest.raises(EnvWorkerError, match=r"env worker 1 failed: .*killed by SIGKILL.*max_restarts") as info:
            env.step(_actions(env, rng))
        assert info.value.index == 1


@pytest.mark.parametrize("parallel", ["process", "none"])
def test_exception_in_a_worker_names_the_worker_and_carries_its_traceback(parallel):
    env = BatchEnv(_config(envs=2), parallel=parallel, ctor=failing_ctor)
    pids = [pid for pid in env.worker_pids if pid is not None]
    try:
        rng = np.random.default_rng(0)
        env.step(_actions(env, rng))
        env.step(_actions(env, rng))
        with pytest.raises(EnvWorkerError, match="env worker 1 failed") as info:
            env.step(_actions(env, rng))
        assert info.value.index == 1
        assert "FloatingPointError: simulated physics blow-up" in str(info.value)
        assert "Traceback" in str(info.value)
    finally:
        env.close()
    for pid in pids:  # close() leaves no worker behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_hung_worker_times_out_and_is_restarted(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_PARALLEL_MARKER", str(tmp_path / "hung"))
    with BatchEnv(_config(envs=2), ctor=hanging_ctor, step_timeout=2) as env:
        rng = np.random.default_rng(0)
        env.step(_actions(env, rng))
        start = time.monotonic()
        obs = env.step(_actions(env, rng))
        assert 1.5 < time.monotonic() - start < 60
        assert list(obs["is_last"]) == [True, False]
        assert "no reply within 2 s" in env.restart_log[0][1]
        obs = env.step(_actions(env, rng))
        assert list(obs["is_first"]) == [True, False]


def test_bad_actions_and_settings_are_named():
    with BatchEnv(_config(envs=2), parallel="none") as env:
        with pytest.raises(ValueError, match=r"action 'action' has shape \(3,\); expected \(2, 3\)"):
            env.step({"action": np.zeros(3, np.float32), "reset": np.zeros(2, bool)})
        with pytest.raises(KeyError, match="lack keys \\['reset'\\]"):
            env.step({"action": np.zeros((2, 3), np.float32)})
        with pytest.raises(ValueError, match="got 1 states for 2 envs"):
            env.load_curriculum_states([{}])
    with pytest.raises(ValueError, match="run.env_parallel must be 'process' or 'none', got 'threads'"):
        BatchEnv(_config(), parallel="threads")


def test_worker_killed_right_after_its_episode_ended_starts_the_next_one():
    """An episode that already ended (is_last) is not ended a second time by the restart."""
    rng = np.random.default_rng(2)
    with BatchEnv(_config(envs=2, **{"env.time_limit": 0.1}), step_timeout=60, max_restarts=1) as env:
        obs = env.step(_actions(env, rng))
        for _ in range(50):
            if obs["is_last"][1]:
                break
            obs = env.step(_actions(env, rng, reset=obs["is_last"]))
        assert obs["is_last"][1]
        os.kill(env.worker_pids[1], signal.SIGKILL)
        after = env.step(_actions(env, rng, reset=obs["is_last"]))
        assert env.restart_log and env.restart_log[0][0] == 1
        assert after["is_first"][1] and not after["is_last"][1]


def test_more_envs_than_memory_holds_are_refused_after_measuring_one(monkeypatch):
    from dreamer_rodent import parallel
    from dreamer_rodent.config import ConfigError

    built = []

    def counting_ctor(config, index):
        built.append(index)
        return make_env(config, index)

    # Pretend each env costs 50 MiB and 1 GiB is free: 20 do not fit (the check keeps half for the rest).
    sizes = iter([100 * 2**20, 150 * 2**20])
    monkeypatch.setattr(parallel, "process_memory", lambda pid="self": next(sizes))
    monkeypatch.setattr(parallel, "available_memory", lambda: 2**30)
    with pytest.raises(ConfigError) as caught:
        BatchEnv(_config(envs=20), parallel="none", ctor=counting_ctor)
    message = str(caught.value)
    assert "run.envs=20 will not fit in memory" in message and "about 50 MiB" in message
    assert "Use --run.envs 10 or fewer" in message  # 2 built + 0.4 GiB / 50 MiB
    assert built == [0, 1]  # measured on the second env, before building the other 18
    monkeypatch.setattr(parallel, "available_memory", lambda: 2**40)
    sizes = iter([100 * 2**20, 150 * 2**20])
    envs = BatchEnv(_config(envs=6), parallel="none")
    assert envs.num == 6
    envs.close()


def test_worker_memory_is_measured_on_the_first_worker_and_refused_before_the_others_start(monkeypatch):
    from dreamer_rodent import parallel
    from dreamer_rodent.config import ConfigError

    assert parallel.process_memory() > 10 * 2**20  # this test process itself: a real reading
    monkeypatch.setattr(parallel, "available_memory", lambda: 2**20)
    with pytest.raises(ConfigError, match="run.envs=8 will not fit in memory"):
        BatchEnv(_config(envs=8), parallel="process")
    assert parallel.env_memory_problem(None, 8, 1, 2**20) is None  # nothing measured: no refusal
    assert parallel.env_memory_problem(2**20, 8, 1, 2**30) is None

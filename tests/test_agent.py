"""The Agent API: shapes, learning on a fixed batch, finite gradients, dtypes, save/load, data-parallel mesh."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dreamer_rodent.agent import Agent
from dreamer_rodent.config import build_config
from dreamer_rodent.spaces import Space

B, T, A = 4, 12, 3
FLAGS = {"agent.opt.lr": 1e-3, "agent.opt.warmup": 0, "agent.ac_opt.lr": 1e-3, "agent.ac_opt.warmup": 0}


def spaces(image=True):
    obs = {
        "vestibular": Space((12,), np.float32), "proprio": Space((7,), np.float32), "target": Space((3,), np.float32),
        "reward": Space((), np.float32), "is_first": Space((), bool), "is_last": Space((), bool),
        "is_terminal": Space((), bool), "log/distance": Space((), np.float32), "unused": Space((2,), np.float32),
    }
    if image:
        obs["image"] = Space((16, 16, 3), np.uint8)
    return obs, {"action": Space((A,), np.float32, -1, 1), "reset": Space((), bool)}


def make_batch(obs_space, seed=0, b=B, t=T):
    rng = np.random.default_rng(seed)
    batch = {}
    for key, space in obs_space.items():
        shape = (b, t) + space.shape
        if space.dtype == bool:
            batch[key] = np.zeros(shape, bool)
        elif space.dtype == np.uint8:
            # a smooth image that moves with time, so the model has something to learn
            x = np.linspace(0, 1, space.shape[0])
            phase = np.arange(t)[None, :, None, None, None] * 0.3 + rng.uniform(0, 6, (b, 1, 1, 1, 1))
            img = 0.5 + 0.5 * np.sin(6 * x[None, None, :, None, None] + phase + np.arange(3) * 2)
            batch[key] = np.broadcast_to(img * 255, shape).astype(np.uint8)
        else:
            batch[key] = np.cumsum(rng.normal(size=shape), 1).astype(np.float32) * 0.3
    batch["is_first"][:, 0] = True
    batch["is_last"][1, 7] = batch["is_terminal"][1, 7] = True
    batch["is_first"][1, 8] = True
    batch["action"] = rng.uniform(-1, 1, (b, t, A)).astype(np.float32)
    return batch


@pytest.fixture(scope="module")
def trained():
    """One float32 debug agent trained for a few steps on one batch; the first metrics are before any update."""
    obs_space, act_space = spaces()
    agent = Agent(obs_space, act_space, build_config(["debug"], FLAGS))
    batch = make_batch(obs_space)
    carry = agent.init_train(B)
    history = []
    for _ in range(40):
        carry, metrics = agent.train(carry, batch)
        history.append(metrics)
    return agent, batch, history


def test_policy_shapes_bounds_and_modes(trained):
    agent, batch, _ = trained
    carry = agent.init_policy(B)
    obs = {k: v[:, 0] for k, v in batch.items() if k != "action"}
    carry, act = agent.policy(carry, obs, mode="train")
    assert set(act) == {"action"} and act["action"].shape == (B, A) and act["action"].dtype == np.float32
    assert np.all(np.abs(act["action"]) <= 1.0)
    assert carry["deter"].shape == (B, agent.spec["deter"])
    obs1 = {k: v[:, 1] for k, v in batch.items() if k != "action"}
    _, a1 = agent.policy(carry, obs1, mode="eval")
    _, a2 = agent.policy(carry, obs1, mode="eval")
    np.testing.assert_array_equal(a1["action"], a2["action"])  # eval takes the mode
    with pytest.raises(ValueError, match="policy mode"):
        agent.policy(carry, obs1, mode="greedy")
    with pytest.raises(KeyError, match="proprio"):
        agent.policy(carry, {k: v for k, v in obs1.items() if k != "proprio"})


def test_train_metrics_and_finite_gradients(trained):
    agent, _, history = trained
    first = history[0]
    for key in ["loss/rec_image", "loss/rec_proprio", "loss/rec_vestibular", "loss/rec_task", "loss/rew", "loss/con",
                "loss/dyn", "loss/rep", "loss/policy", "loss/value", "loss/repval", "retnorm/scale", "actor/entropy",
                "grad_norm/total", "grad_norm/rssm", "grad_norm/actor", "grad_norm/critic"]:
        assert key in first, key
    assert "unused" not in agent.keys and agent.ignored_keys == ["unused"]
    for metrics in history:
        assert all(np.isfinite(v) for v in metrics.values()), {k: v for k, v in metrics.items() if not np.isfinite(v)}
    # A finite global norm means every gradient entry is finite; each module receives a gradient.
    for module in ["encoder", "decoder", "rssm", "reward", "cont", "actor", "critic"]:
        assert 0 < first[f"grad_norm/{module}"] < np.inf, module
    assert agent.step == len(history)


def test_training_on_fixed_batch_lowers_world_model_loss(trained):
    _, _, history = trained
    before = np.mean([m["loss/world_model"] for m in history[:3]])
    after = np.mean([m["loss/world_model"] for m in history[-3:]])
    assert after < 0.7 * before, (before, after)
    assert history[-1]["loss/rec_image"] < 0.7 * history[0]["loss/rec_image"]


def test_report_shapes(trained):
    agent, batch, _ = trained
    report = agent.report(batch)
    video = report["openloop/image"]
    assert video.dtype == np.uint8 and video.shape == (B, T, 16, 3 * 16, 3)
    np.testing.assert_array_equal(video[:, :, :, :16], batch["image"][:B])  # left third is the truth
    assert np.isfinite(report["loss/world_model"]) and np.isfinite(report["openloop/image_mse"])


def test_save_load_roundtrip_and_mismatch(trained):
    agent, batch, _ = trained
    arrays = agent.save()
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    assert {"step", "key", "policy_key", "retnorm/lo"} <= set(arrays) and any(k.startswith("opt/") for k in arrays)
    carry = agent.init_train(B)
    agent.train(carry, batch)  # changes params, optimiser, slow critic, step
    changed = agent.save()
    assert not np.array_equal(changed["params/critic_out/Dense_0/kernel"], arrays["params/critic_out/Dense_0/kernel"])
    agent.load(arrays)
    restored = agent.save()
    assert set(restored) == set(arrays)
    for key in arrays:
        np.testing.assert_array_equal(restored[key], arrays[key], err_msg=key)
    bad = dict(arrays)
    name = "params/critic_out/Dense_0/kernel"
    bad[name] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"critic_out/Dense_0/kernel.*\(3, 3\).*\(16, 31\)"):
        agent.load(bad)
    del bad[name]
    with pytest.raises(KeyError, match="missing"):
        agent.load(bad)
    agent.load(arrays)


def test_bfloat16_matches_float32(trained):
    """Same seed, same batch: the first update's losses (before any change) agree to bfloat16 precision."""
    _, batch, history = trained
    obs_space, act_space = spaces()
    agent = Agent(obs_space, act_space, build_config(["debug"], dict(FLAGS, **{"jax.compute_dtype": "bfloat16"})))
    _, metrics = agent.train(agent.init_train(B), batch)
    for key in ["loss/world_model", "loss/rec_image", "loss/rec_proprio", "loss/dyn", "loss/value"]:
        np.testing.assert_allclose(metrics[key], history[0][key], rtol=0.05, err_msg=key)
    assert metrics["loss/world_model"] != history[0]["loss/world_model"]  # it did compute in bfloat16


MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_agent import spaces, make_batch, FLAGS
    from dreamer_rodent.agent import Agent
    from dreamer_rodent.config import build_config
    assert jax.device_count() == 4, jax.devices()
    obs_space, act_space = spaces(image=False)
    config = build_config(["debug"], FLAGS)
    batch = make_batch(obs_space, seed=5, b=8)
    mesh = jax.make_mesh((4,), ("data",))
    out = {{}}
    for name, m in [("mesh4", mesh), ("single", None)]:
        agent = Agent(obs_space, act_space, config, mesh=m)
        carry = agent.init_train(8)
        carry, m1 = agent.train(carry, batch)
        carry, m2 = agent.train(carry, batch)
        out[name] = [m1["loss/total"], m2["loss/total"], m2["loss/world_model"]]
        if name == "mesh4":
            try:
                agent.train(agent.init_train(8), make_batch(obs_space, b=6))
            except ValueError as e:
                out["error"] = str(e)
    print("RESULT" + json.dumps(out))
""")


def test_mesh_four_devices_matches_one_and_rejects_indivisible_batch():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    script = MESH_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT")[-1])
    np.testing.assert_allclose(out["mesh4"], out["single"], rtol=1e-4)
    assert "batch size 6" in out["error"] and "4 devices" in out["error"]


@pytest.mark.parametrize("preset,millions", [("size1m", 1), ("size12m", 12)])
def test_preset_parameter_counts_match_their_names(preset, millions):
    """Counted from shapes only (jax.eval_shape) for a rodent obs space: within 25% of the preset's name."""
    from dreamer_rodent.agent import count_params
    obs = {"image": Space((64, 64, 3), np.uint8), "vestibular": Space((12,), np.float32),
           "proprio": Space((100,), np.float32), "target": Space((3,), np.float32)}
    counts = count_params(obs, {"action": Space((38,), np.float32, -1, 1)}, build_config([preset]))
    assert abs(counts["total"] / (millions * 1e6) - 1) < 0.25, counts
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert set(counts) == {"encoder", "decoder", "rssm", "reward", "cont", "actor", "critic", "total"}


def test_task_keys_other_than_target_reach_the_task_encoder():
    """escape_bowl emits 'origin', two_touch 'task_state': the agent train/eval build must not drop them."""
    from dreamer_rodent.train import make_agent

    obs_space, act_space = spaces(image=False)
    obs_space["origin"] = Space((3,), np.float32)
    obs_space["task_state"] = Space((4,), np.float32)
    agent = make_agent(obs_space, {"action": act_space["action"]}, build_config(["debug"]), None)
    task = {name: keys for name, keys, _, _ in agent.spec["groups"]}["task"]
    assert task[0] == "target" and {"origin", "task_state"} <= set(task)
    assert "origin" not in agent.ignored_keys and "task_state" not in agent.ignored_keys


def test_reinforce_actor_gradients_and_unknown_mode():
    """`agent.actor_grad reinforce` trains every module too; an unknown mode names the choices."""
    obs_space, act_space = spaces(image=False)
    config = build_config(["debug"], dict(FLAGS, **{"agent.actor_grad": "reinforce"}))
    agent = Agent(obs_space, act_space, config)
    batch = make_batch(obs_space)
    _, metrics = agent.train(agent.init_train(B), batch)
    for module in ["encoder", "rssm", "reward", "actor", "critic"]:
        assert 0 < metrics[f"grad_norm/{module}"] < np.inf, module
    with pytest.raises(ValueError, match="backprop, reinforce"):
        Agent(obs_space, act_space, build_config(["debug"], {"agent.actor_grad": "dynamics"}))


def test_rec_scales_weight_each_decoder_branch():
    """agent.rec_scales multiplies one branch's reconstruction loss in the world-model total, no other term."""
    obs_space, act_space = spaces()
    batch = make_batch(obs_space)
    plain = Agent(obs_space, act_space, build_config(["debug"], FLAGS))
    scaled = Agent(obs_space, act_space,
                   build_config(["debug"], dict(FLAGS, **{"agent.rec_scales.task": 3.0, "agent.rec_scales.image": 0.5})))
    _, before = plain.train(plain.init_train(B), batch)  # metrics are of the parameters before the update
    _, after = scaled.train(scaled.init_train(B), batch)
    assert np.isclose(after["loss/rec_task"], before["loss/rec_task"], rtol=1e-6)
    expected = before["loss/world_model"] + 2.0 * before["loss/rec_task"] - 0.5 * before["loss/rec_image"]
    assert np.isclose(after["loss/world_model"], expected, rtol=1e-5), (after["loss/world_model"], expected)

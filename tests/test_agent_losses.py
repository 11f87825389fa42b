"""Where each loss sends its gradient, and the DreamerV3 details that the learning curves depend on.

Each test fails if its property breaks: computed numerically on a tiny debug
agent, not by reading the code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamer_rodent.agent import Agent, dists
from dreamer_rodent.agent.agent import module_of
from dreamer_rodent.agent.nets import Nets, feature
from dreamer_rodent.config import build_config
from test_agent import B, FLAGS, T, make_batch, spaces

MODULES = ("encoder", "decoder", "rssm", "reward", "cont", "actor", "critic")


def make(flags=None, image=False):
    obs_space, act_space = spaces(image=image)
    agent = Agent(obs_space, act_space, build_config(["debug"], dict(FLAGS, **(flags or {}))))
    batch = agent._train_batch(make_batch(obs_space))
    return agent, batch


@pytest.fixture(scope="module")
def default():
    """One debug agent (backprop actor gradients), shared by the tests that only read it."""
    return make({"agent.actor_grad": "backprop"})


def trained_params(agent, batch):
    """The initial parameters with the zero-initialised output layers of reward and critic set to small random
    values, as a few updates would: with exactly zero output weights no gradient reaches what feeds them."""
    params = dict(agent._state["params"])
    for i, name in enumerate(("rew_out", "critic_out")):
        params[name] = jax.tree.map(lambda x: 0.01 * jax.random.normal(jax.random.PRNGKey(10 + i), x.shape),
                                    params[name])
    return params


def grad_norms(agent, params, batch, metrics_names):
    """Per-module gradient norms of each named loss term of the full loss function (one jitted Jacobian)."""
    state = agent._state

    def terms(p):
        _, (metrics, _, _, _) = agent._loss(p, state["slow"], state["retnorm"], batch, agent._zero_carry(B),
                                         jax.random.PRNGKey(3))
        return jnp.stack([metrics[m] for m in metrics_names])

    jac = jax.jit(jax.jacrev(terms))(params)
    out = {}
    for i, metric in enumerate(metrics_names):
        norms = {m: 0.0 for m in MODULES}
        for name, sub in jac.items():
            norms[module_of(name)] += float(sum(jnp.sum(jnp.square(x[i])) for x in jax.tree.leaves(sub)))
        out[metric] = {m: np.sqrt(v) for m, v in norms.items()}
    return out


@pytest.mark.parametrize("actor_grad,repval_grad", [("backprop", True), ("reinforce", False)])
def test_each_loss_reaches_only_its_own_modules(actor_grad, repval_grad):
    agent, batch = make({"agent.actor_grad": actor_grad, "agent.repval_grad": repval_grad})
    expect = {
        "loss/world_model": {"encoder", "decoder", "rssm", "reward", "cont"},
        "loss/policy": {"actor"},
        "loss/value": {"critic"},
        # agent.repval_grad: the replay value loss also trains the latent (encoder and RSSM), nothing else.
        "loss/repval": {"critic", "encoder", "rssm"} if repval_grad else {"critic"},
    }
    norms = grad_norms(agent, trained_params(agent, batch), batch, list(expect))
    for metric, live in expect.items():
        for module in MODULES:
            if module in live:
                assert norms[metric][module] > 0, (metric, module, norms[metric])
            else:
                assert norms[metric][module] == 0.0, (metric, module, norms[metric])


def test_backprop_actor_does_not_differentiate_through_its_own_future_inputs(default):
    """d a_1 / d actor params is only the direct path: the actor's input feat_1 carries no gradient back to a_0."""
    agent, batch = default
    params = trained_params(agent, batch)
    n = 6
    deter = jax.random.normal(jax.random.PRNGKey(0), (n, agent.spec["deter"]))
    stoch = jax.nn.one_hot(jax.random.randint(jax.random.PRNGKey(1), (n, agent.spec["stoch"]), 0,
                                              agent.spec["classes"]), agent.spec["classes"])
    key = jax.random.PRNGKey(2)
    feats, _ = agent._imagine(params, deter, stoch, key, grad=True)
    noise_key, _ = jax.random.split(jax.random.split(key, agent.ac.imag_length)[1])

    def imagined(p):
        return jnp.sum(agent._imagine(p, deter, stoch, key, grad=True)[1][1])

    def direct(p):
        mean, std = agent._apply(p, Nets.actor, jax.lax.stop_gradient(feats[1]))
        return jnp.sum(mean + std * jax.random.normal(noise_key, mean.shape))

    g_full, g_direct = jax.grad(imagined)(params), jax.grad(direct)(params)
    for name in ("actor_net", "actor_out"):
        for a, b in zip(jax.tree.leaves(g_full[name]), jax.tree.leaves(g_direct[name])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # ...and the returns still carry the actor's gradient through the actions into the dynamics.
    assert float(jnp.abs(jax.grad(lambda p: jnp.sum(agent._imagine(p, deter, stoch, key, True)[0][2]))(params)
                         ["actor_out"]["Dense_0"]["kernel"]).max()) > 0


def test_an_action_outside_the_box_enters_the_dynamics_clipped_with_a_scaled_gradient(default):
    agent, batch = default
    params = agent._state["params"]
    deter = jax.random.normal(jax.random.PRNGKey(0), (1, agent.spec["deter"]))
    stoch = jnp.zeros((1, agent.spec["stoch"], agent.spec["classes"])).at[..., 0].set(1.0)
    core = lambda a: agent._apply(params, Nets.core, deter, stoch, a)
    at_one, at_two = jnp.full((1, 3), 1.0), jnp.full((1, 3), 2.0)
    np.testing.assert_allclose(core(at_two), core(at_one), rtol=1e-6)  # the clipped value
    _, d_one = jax.jvp(core, (at_one,), (jnp.ones((1, 3)),))
    _, d_two = jax.jvp(core, (at_two,), (jnp.ones((1, 3)),))
    np.testing.assert_allclose(d_two, 0.5 * d_one, rtol=1e-5, atol=1e-8)  # gradient scaled by 1/|a|


def test_reward_and_critic_start_at_exactly_zero_and_read_the_raw_space_mean(default):
    agent, _ = default
    params = agent._state["params"]
    feat = jax.random.normal(jax.random.PRNGKey(0), (32, agent.spec["deter"] + agent.spec["stoch"] *
                                                     agent.spec["classes"]))
    for method in (Nets.reward, Nets.critic):
        assert np.all(np.asarray(dists.twohot_mean(agent._apply(params, method, feat), agent.bins)) == 0.0)
    np.testing.assert_allclose(np.asarray(agent.bins)[[0, -1]], [-np.expm1(20.0), np.expm1(20.0)], rtol=1e-6)


def test_loss_scales_of_the_config_are_the_ones_applied():
    flags = {"agent.loss_scales.rew": 2.0, "agent.loss_scales.dyn": 0.5, "agent.loss_scales.rep": 0.3,
             "agent.loss_scales.con": 3.0, "agent.loss_scales.policy": 0.7, "agent.loss_scales.value": 1.5,
             "agent.loss_scales.repval": 0.2, "agent.loss_scales.rec": 0.25, "agent.rec_scales.task": 4.0}
    agent, batch = make(flags)
    state = agent._state
    _, (metrics, _, _, _) = jax.jit(agent._loss)(state["params"], state["slow"], state["retnorm"], batch,
                                              agent._zero_carry(B), jax.random.PRNGKey(0))
    metrics = {k: float(v) for k, v in metrics.items()}
    sc = agent.ac.loss_scales
    wm = (sc.rew * metrics["loss/rew"] + sc.con * metrics["loss/con"] + sc.dyn * metrics["loss/dyn"]
          + sc.rep * metrics["loss/rep"] + sc.rec * (metrics["loss/rec_vestibular"] + metrics["loss/rec_proprio"]
                                                      + 4.0 * metrics["loss/rec_task"]))
    np.testing.assert_allclose(metrics["loss/world_model"], wm, rtol=1e-5)
    total = wm + 0.7 * metrics["loss/policy"] + 1.5 * metrics["loss/value"] + 0.2 * metrics["loss/repval"]
    np.testing.assert_allclose(metrics["loss/total"], total, rtol=1e-5)


def test_continue_target_is_one_minus_is_terminal(default):
    agent, batch = default
    batch = dict(batch, is_terminal=jnp.asarray(np.asarray(batch["is_terminal"])))
    params = trained_params(agent, batch)
    _, metrics, (_, _, feat), _ = agent._wm_losses(params, batch, agent._zero_carry(B), jax.random.PRNGKey(0))
    logit = agent._apply(params, Nets.cont, feat)
    target = 1.0 - np.asarray(batch["is_terminal"], np.float32)
    assert target.min() == 0.0 and target.max() == 1.0  # the batch has a terminal step
    expected = -(target * jax.nn.log_sigmoid(logit) + (1 - target) * jax.nn.log_sigmoid(-logit))
    np.testing.assert_allclose(metrics["loss/con"], np.mean(expected), rtol=1e-5)


def test_two_learning_rates_and_the_slow_critic_ema():
    """With agent.opt.lr 0 only actor and critic move (their own agent.ac_opt); slow += rate * (critic - slow)."""
    agent, batch = make({"agent.opt.lr": 0.0, "agent.ac_opt.warmup": 0, "agent.slow_rate": 0.25})
    batch = jax.device_get(batch)
    carry, _ = agent.train(agent.init_train(B), batch)  # the zero-initialised heads become non-zero
    before, slow0 = jax.device_get(agent._state["params"]), jax.device_get(agent._state["slow"])
    _, metrics = agent.train(carry, batch)
    after, slow1 = jax.device_get(agent._state["params"]), jax.device_get(agent._state["slow"])
    for name in before:
        moved = any(np.abs(a - b).max() > 0 for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])))
        assert moved == (module_of(name) in ("actor", "critic")), name
    assert metrics["opt/lr"] == 0.0 and np.isclose(metrics["opt/ac_lr"], 1e-3)
    for name in slow0:
        for s0, p, s1 in zip(jax.tree.leaves(slow0[name]), jax.tree.leaves(after[name]), jax.tree.leaves(slow1[name])):
            np.testing.assert_allclose(s1, s0 + 0.25 * (p - s0), rtol=1e-5, atol=1e-7)


def test_actor_output_starts_small_and_policy_near_its_centre(default):
    agent, _ = default
    kernel = np.asarray(agent._state["params"]["actor_out"]["Dense_0"]["kernel"])
    fan_in = kernel.shape[0]
    assert 0.7 < kernel.std() * np.sqrt(fan_in) / 0.01 < 1.3, kernel.std() * np.sqrt(fan_in)


def test_imagination_starts_weights_and_advantage_by_hand():
    """Imagination starts from every replayed state; w_0 = 1 - is_terminal of the start, then discount x continue;
    with REINFORCE the policy loss is -mean(w * (logp * (R - v) / S + actent * H)), S from retnorm."""
    agent, batch = make({"agent.actor_grad": "reinforce", "agent.retnorm_limit": 1e-6})
    params = trained_params(agent, batch)
    _, _, (deter, stoch, feat), _ = agent._wm_losses(params, batch, agent._zero_carry(B), jax.random.PRNGKey(0))
    _, metrics, _ = agent._ac_losses(params, agent._state["slow"], agent._state["retnorm"], batch, deter, stoch,
                                     feat, jax.random.PRNGKey(1))
    feats, raws = agent._imagine(params, deter.reshape((-1,) + deter.shape[2:]),
                                 stoch.reshape((-1,) + stoch.shape[2:]), jax.random.PRNGKey(1), grad=False)
    np.testing.assert_allclose(feats[0], np.asarray(feat).reshape(feats[0].shape), rtol=1e-6)  # every replayed state
    rew = dists.twohot_mean(agent._apply(params, Nets.reward, feats[1:]), agent.bins)
    con = jax.nn.sigmoid(agent._apply(params, Nets.cont, feats[1:]))
    val = dists.twohot_mean(agent._apply(params, Nets.critic, feats), agent.bins)
    rets = dists.lambda_returns(rew, con, val, agent.discount, agent.ac.lambda_)
    _, scale = dists.retnorm_update(agent._state["retnorm"], rets, agent.ac.retnorm_rate, 5.0, 95.0, 1e-6)
    np.testing.assert_allclose(metrics["imag/adv_mag"], float(jnp.mean(jnp.abs(rets - val[:-1]) / scale)), rtol=1e-4)
    np.testing.assert_allclose(metrics["retnorm/scale"], float(scale), rtol=1e-5)
    mean, std = agent._apply(params, Nets.actor, feats[:-1])
    logp, ent = dists.normal_logp(raws, mean, std), dists.normal_entropy(std)
    con0 = 1.0 - np.asarray(batch["is_terminal"], np.float32).reshape(-1)
    w = dists.return_weights(jnp.concatenate([con0[None], con], 0), agent.discount)[:-1]
    assert float(w[0].min()) == 0.0  # the terminal start state gets no weight
    np.testing.assert_allclose(metrics["imag/weight"], float(jnp.mean(w)), rtol=1e-5)
    policy = -jnp.mean(w * (logp * (rets - val[:-1]) / scale + agent.ac.actent * ent))
    np.testing.assert_allclose(metrics["loss/policy"], float(policy), rtol=1e-4)


def test_imag_last_starts_imagination_and_the_replay_value_loss_at_the_last_k_states():
    """agent.imag_last = K: imagination starts from the last K replayed states of each row (B x K starts, cost ~K/T),
    and the replay value loss runs over those K steps, bootstrapped from their imagined returns."""
    K = 5
    agent, batch = make({"agent.actor_grad": "reinforce", "agent.imag_last": K})
    # Episode ends inside the last K steps, so that the masks and cuts of the replay returns are exercised.
    is_last, is_terminal = np.zeros((B, T), bool), np.zeros((B, T), bool)
    is_last[0, T - 3] = is_terminal[0, T - 3] = True
    is_last[1, T - 2] = True
    batch = dict(batch, is_last=jnp.asarray(is_last), is_terminal=jnp.asarray(is_terminal))
    params = trained_params(agent, batch)
    _, _, (deter, stoch, feat), _ = agent._wm_losses(params, batch, agent._zero_carry(B), jax.random.PRNGKey(0))
    seen = {}
    imagine = agent._imagine

    def spy(p, d, s, key, grad):
        seen["deter"], seen["stoch"] = d, s
        seen["out"] = imagine(p, d, s, key, grad)
        return seen["out"]

    agent._imagine = spy
    _, metrics, _ = agent._ac_losses(params, agent._state["slow"], agent._state["retnorm"], batch, deter, stoch,
                                     feat, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(seen["deter"], np.asarray(deter)[:, -K:].reshape(B * K, -1))
    np.testing.assert_array_equal(seen["stoch"], np.asarray(stoch)[:, -K:].reshape((B * K,) + stoch.shape[2:]))
    feats, _ = seen["out"]
    rew = dists.twohot_mean(agent._apply(params, Nets.reward, feats[1:]), agent.bins)
    con = jax.nn.sigmoid(agent._apply(params, Nets.cont, feats[1:]))
    val = dists.twohot_mean(agent._apply(params, Nets.critic, feats), agent.bins)
    rets = dists.lambda_returns(rew, con, val, agent.discount, agent.ac.lambda_)
    tail = lambda k: jnp.asarray(batch[k], jnp.float32)[:, -K:]
    rrets = dists.replay_returns(tail("reward"), tail("is_last"), tail("is_terminal"), rets[0].reshape(B, K),
                                 agent.discount, agent.ac.lambda_)
    assert rrets.shape == (B, K - 1)
    np.testing.assert_allclose(metrics["replay/return"], float(jnp.mean(rrets)), rtol=1e-4)
    np.testing.assert_allclose(metrics["imag/return"], float(jnp.mean(rets)), rtol=1e-4)
    # The replay value loss: the critic on the replayed features of steps T-K .. T-2, masked after is_last.
    rep_feat = feat[:, T - K:T - 1]
    slow = dists.twohot_mean(agent._apply(dict(params, **agent._state["slow"]), Nets.critic, rep_feat), agent.bins)
    logits = agent._apply(params, Nets.critic, rep_feat)
    mask = 1.0 - tail("is_last")[:, :-1]
    assert float(mask.min()) == 0.0
    repval = jnp.mean(mask * (dists.twohot_loss(logits, rrets, agent.bins)
                              + agent.ac.loss_scales.slowreg * dists.twohot_loss(logits, slow, agent.bins)))
    np.testing.assert_allclose(metrics["loss/repval"], float(repval), rtol=1e-4)


def test_imag_last_of_the_row_length_or_more_is_every_state():
    metrics = {}
    for k in (0, T, 100):
        agent, batch = make({"agent.actor_grad": "reinforce", "agent.imag_last": k})
        _, (m, _, _, _) = agent._loss(agent._state["params"], agent._state["slow"], agent._state["retnorm"], batch,
                                      agent._zero_carry(B), jax.random.PRNGKey(3))
        metrics[k] = {name: float(v) for name, v in m.items()}
    assert metrics[0] == metrics[T] == metrics[100]
    agent, batch = make({"agent.actor_grad": "reinforce", "agent.imag_last": 4})
    _, (m, _, _, _) = agent._loss(agent._state["params"], agent._state["slow"], agent._state["retnorm"], batch,
                                  agent._zero_carry(B), jax.random.PRNGKey(3))
    assert float(m["imag/weight"]) != metrics[0]["imag/weight"] or float(m["loss/repval"]) != metrics[0]["loss/repval"]


@pytest.mark.parametrize("value", [1, -2])
def test_imag_last_below_two_is_refused(value):
    with pytest.raises(ValueError, match="imag_last"):
        make({"agent.imag_last": value})

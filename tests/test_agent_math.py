"""The agent's math against hand-computed numbers (no networks)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dreamer_rodent.agent import dists
from dreamer_rodent.agent.optim import adaptive_clip, make_optimizer, scale_by_laprop


def test_symlog_values_and_symexp_inverse():
    np.testing.assert_allclose(dists.symlog(jnp.array([math.e - 1, -(math.e**2 - 1), 0.0])), [1.0, -2.0, 0.0], rtol=1e-6)
    x = jnp.array([-1000.0, -3.5, -1e-3, 0.0, 0.2, 7.0, 12345.0])
    np.testing.assert_allclose(dists.symexp(dists.symlog(x)), x, rtol=1e-5)


def test_twohot_bins_in_raw_space_weights_split_in_raw_space_and_decode():
    b = dists.bins(5, -2.0, 2.0)  # symexp of [-2, -1, 0, 1, 2]
    e1, e2 = math.e - 1, math.e**2 - 1
    np.testing.assert_allclose(b, [-e2, -e1, 0, e1, e2], rtol=1e-6)
    assert float(b[0]) == -float(b[-1]) and float(b[1]) == -float(b[3])  # exactly antisymmetric
    # Weights are linear in raw space: 1.0 lies between 0 and e-1 at 1/(e-1) of the way.
    w = 1.0 / e1
    np.testing.assert_allclose(dists.twohot(jnp.array(1.0), b), [0, 0, 1 - w, w, 0], atol=1e-6)
    np.testing.assert_allclose(dists.twohot(jnp.array(-e1), b), [0, 1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(dists.twohot(jnp.array(-100.0), b), [1, 0, 0, 0, 0], atol=1e-6)  # clipped
    np.testing.assert_allclose(dists.twohot(jnp.array(e2), b), [0, 0, 0, 0, 1], atol=1e-6)
    # Encode then decode returns the value at every scale.
    b = dists.bins(255)
    np.testing.assert_allclose(np.asarray(b)[[0, 127, 254]], [-math.expm1(20.0), 0.0, math.expm1(20.0)], rtol=1e-6)
    values = jnp.array([-250.0, -1.0, 0.0, 0.37, 3.0, 1e4])
    weights = dists.twohot(values, b)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose((weights * b).sum(-1), values, rtol=1e-5, atol=1e-5)
    logits = jnp.log(weights + 1e-30)
    np.testing.assert_allclose(dists.twohot_mean(logits, b), values, rtol=1e-5, atol=1e-5)
    # The loss is the cross-entropy against those weights.
    logits = jax.random.normal(jax.random.PRNGKey(0), (6, 255))
    expected = -(weights * jax.nn.log_softmax(logits)).sum(-1)
    np.testing.assert_allclose(dists.twohot_loss(logits, values, b), expected, rtol=1e-5)


def test_twohot_mean_is_the_raw_space_mean_and_exactly_zero_when_uniform():
    b = dists.bins(255)
    # A 50/50 head between -80 and 0 reads -40 (a symlog-space mean would read symexp(-2.2) = -7.9).
    mix = 0.5 * dists.twohot(jnp.array(-80.0), b) + 0.5 * dists.twohot(jnp.array(0.0), b)
    np.testing.assert_allclose(dists.twohot_mean(jnp.log(mix + 1e-30), b), -40.0, rtol=1e-5)
    for n in (31, 255, 8):  # odd and even bin counts
        assert float(dists.twohot_mean(jnp.zeros((3, n)), dists.bins(n))[0]) == 0.0
    # Against a float64 sum for random heads: the error is tiny beside the bins' +-4.9e8.
    logits = jax.random.normal(jax.random.PRNGKey(1), (500, 255)) * 3
    ref = (np.asarray(jax.nn.softmax(logits), np.float64) * np.asarray(b, np.float64)).sum(-1)
    assert np.abs(np.asarray(dists.twohot_mean(logits, b)) - ref).max() < 1e-5 * np.abs(ref).max()
    # Its gradient is the softmax's: p * (b - mean).
    grad = jax.grad(lambda l: dists.twohot_mean(l, b))(jnp.zeros(255))
    np.testing.assert_allclose(grad, b / 255, rtol=1e-5, atol=1e-3)
    small = dists.bins(31)  # and at random heads (bins up to +-4.9e8 would swamp a float32 comparison)
    for row in np.asarray(jax.random.normal(jax.random.PRNGKey(2), (4, 31)) * 2):
        p = np.exp(row.astype(np.float64) - row.max())
        p /= p.sum()
        mean = (p * np.asarray(small, np.float64)).sum()
        grad = jax.grad(lambda l: dists.twohot_mean(l, small))(jnp.asarray(row))
        np.testing.assert_allclose(grad, p * (np.asarray(small, np.float64) - mean), rtol=1e-4, atol=1e-4)


def test_unimix_probabilities():
    logits = jnp.array([0.0, math.log(3.0)])  # softmax [0.25, 0.75]
    probs = jnp.exp(dists.unimix_logits(logits, 0.01))
    np.testing.assert_allclose(probs, [0.99 * 0.25 + 0.005, 0.99 * 0.75 + 0.005], rtol=1e-6)
    # A near-deterministic categorical keeps at least unimix / classes on every class.
    probs = jnp.exp(dists.unimix_logits(jnp.array([100.0, 0.0, 0.0, 0.0]), 0.01))
    np.testing.assert_allclose(probs, [0.99 + 0.0025, 0.0025, 0.0025, 0.0025], rtol=1e-5)


def _kl_case(copies):
    post = jnp.log(jnp.array([[0.5, 0.5]] * copies))
    prior = jnp.log(jnp.array([[0.9, 0.1]] * copies))
    return post, prior


KL_ONE = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # 0.5108 nats per variable


def test_free_bits_clip_small_kl_and_pass_large_kl():
    post, prior = _kl_case(1)
    np.testing.assert_allclose(dists.categorical_kl(post, prior), KL_ONE, rtol=1e-5)
    dyn, rep, kl = dists.kl_losses(post, prior, 1.0)
    assert float(dyn) == 1.0 and float(rep) == 1.0  # under 1 nat: clipped to the free bits
    np.testing.assert_allclose(kl, KL_ONE, rtol=1e-5)
    grad = jax.grad(lambda q: dists.kl_losses(post, q, 1.0)[0])(prior)
    assert float(jnp.abs(grad).max()) == 0.0  # and no gradient
    post, prior = _kl_case(3)  # three latent variables: KL sums to 1.53 > 1
    dyn, rep, _ = dists.kl_losses(post, prior, 1.0)
    np.testing.assert_allclose([dyn, rep], [3 * KL_ONE] * 2, rtol=1e-5)


def test_kl_balance_stop_gradients():
    post, prior = _kl_case(3)
    d_dyn = jax.grad(lambda p, q: dists.kl_losses(p, q, 1.0)[0], argnums=(0, 1))(post, prior)
    d_rep = jax.grad(lambda p, q: dists.kl_losses(p, q, 1.0)[1], argnums=(0, 1))(post, prior)
    assert float(jnp.abs(d_dyn[0]).max()) == 0.0 and float(jnp.abs(d_dyn[1]).max()) > 0.1  # dyn trains the prior
    assert float(jnp.abs(d_rep[1]).max()) == 0.0 and float(jnp.abs(d_rep[0]).max()) > 0.1  # rep trains the posterior
    # d KL(p||q) / d logits_q = q - p: [0.9 - 0.5, 0.1 - 0.5] per variable.
    np.testing.assert_allclose(d_dyn[1], [[0.4, -0.4]] * 3, rtol=1e-5)


def test_lambda_returns_hand_trajectory():
    rewards = jnp.array([1.0, 2.0])  # into states 1 and 2
    conts = jnp.array([1.0, 0.5])
    values = jnp.array([0.0, 3.0, 4.0])
    rets = dists.lambda_returns(rewards, conts, values, 0.9, 0.5)
    # R2 = 4; R1 = 2 + 0.9*0.5*(0.5*4 + 0.5*4) = 3.8; R0 = 1 + 0.9*(0.5*3 + 0.5*3.8) = 4.06
    np.testing.assert_allclose(rets, [4.06, 3.8], rtol=1e-6)
    np.testing.assert_allclose(dists.return_weights(jnp.array([1.0, 1.0, 0.5]), 0.9), [1.0, 0.9, 0.405], rtol=1e-6)
    # lambda = 1 with no discount is the plain sum of rewards plus the last value.
    np.testing.assert_allclose(dists.lambda_returns(rewards, jnp.ones(2), values, 1.0, 1.0), [7.0, 6.0])


def test_replay_returns_cut_at_terminal_and_last():
    rew = jnp.array([[0.0, 1.0, 2.0]])
    boot = jnp.array([[10.0, 20.0, 30.0]])
    zeros = jnp.zeros((1, 3))
    # R1 = 2 + 0.9*(0.5*30 + 0.5*30) = 29; R0 = 1 + 0.9*(0.5*20 + 0.5*29) = 23.05
    np.testing.assert_allclose(dists.replay_returns(rew, zeros, zeros, boot, 0.9, 0.5), [[23.05, 29.0]], rtol=1e-6)
    term = jnp.array([[0.0, 0.0, 1.0]])  # step 2 terminal: no future after its reward
    np.testing.assert_allclose(dists.replay_returns(rew, zeros, term, boot, 0.9, 0.5), [[10.9, 2.0]], rtol=1e-6)
    last = jnp.array([[0.0, 1.0, 0.0]])  # step 1 ends the episode: R0 bootstraps from step 1 only
    np.testing.assert_allclose(dists.replay_returns(rew, last, zeros, boot, 0.9, 0.5)[0, 0], 1 + 0.9 * 20, rtol=1e-6)


def test_percentile_return_normalisation_is_not_debiased():
    state = dists.retnorm_init()
    state, scale = dists.retnorm_update(state, jnp.arange(101.0), 0.01, 5.0, 95.0, 1.0)
    np.testing.assert_allclose([state["lo"], state["hi"]], [0.05, 0.95], rtol=1e-5)
    assert float(scale) == 1.0  # 0.95 - 0.05 < limit: a young EMA does not inflate advantages (no debiasing)
    for _ in range(999):
        state, scale = dists.retnorm_update(state, jnp.arange(101.0), 0.01, 5.0, 95.0, 1.0)
    np.testing.assert_allclose(scale, 90.0 * (1 - 0.99**1000), rtol=1e-3)  # converges to 95 - 5
    _, scale = dists.retnorm_update(dists.retnorm_init(), jnp.linspace(0, 0.1, 50), 0.01, 5.0, 95.0, 1.0)
    assert float(scale) == 1.0  # small returns are not scaled up: floor at the limit


def test_actor_bounds():
    raw_mean = jnp.array([-1e4, -1.0, 0.0, 1.0, 1e4])
    raw_std = jnp.array([-1e4, -2.0, 0.0, 2.0, 1e4])
    mean, std = dists.bounded_normal(raw_mean, raw_std, 0.1, 1.0)
    np.testing.assert_allclose(mean, np.tanh([-1e4, -1, 0, 1, 1e4]), rtol=1e-6)
    assert float(mean.min()) >= -1 and float(mean.max()) <= 1
    np.testing.assert_allclose(np.asarray(std)[[0, 1, 4]], [0.1, 0.9 * 0.5 + 0.1, 1.0], rtol=1e-5)
    # log-density and entropy of a 1-D standard normal
    np.testing.assert_allclose(dists.normal_logp(jnp.array([1.0]), jnp.array([0.0]), jnp.array([1.0])),
                               -0.5 - 0.5 * math.log(2 * math.pi), rtol=1e-6)
    np.testing.assert_allclose(dists.normal_entropy(jnp.array([1.0, 2.0])),
                               2 * 0.5 * math.log(2 * math.pi * math.e) + math.log(2.0), rtol=1e-6)


def test_agc_per_tensor_hand_case():
    tx = adaptive_clip(0.3)
    params = {"w": jnp.array([[1.0, 0.0], [0.0, 10.0]]), "b": jnp.array([3.0, 4.0])}
    grads = {"w": jnp.ones((2, 2)), "b": jnp.array([30.0, 40.0])}
    out, _ = tx.update(grads, tx.init(params), params)
    # w has norm sqrt(101) (limit 3.015); its gradient norm 2 passes whole, every column alike.
    np.testing.assert_allclose(out["w"], np.ones((2, 2)), rtol=1e-6)
    # The bias has norm 5: gradient norm 50 is cut to 1.5, direction kept.
    np.testing.assert_allclose(out["b"], [0.9, 1.2], rtol=1e-6)
    # A big gradient on one column scales the whole tensor down together (per unit it would cut column 0 alone).
    out, _ = tx.update({"w": jnp.array([[30.0, 1.0], [40.0, 1.0]]), "b": grads["b"]}, tx.init(params), params)
    factor = 0.3 * math.sqrt(101) / math.sqrt(2500 + 2)
    np.testing.assert_allclose(out["w"], np.array([[30.0, 1.0], [40.0, 1.0]]) * factor, rtol=1e-5)
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(grads, tx.init(params), None)


def test_laprop_with_agc_two_steps_hand_case():
    tx, schedule = make_optimizer(lr=0.1, agc=0.3, eps=1e-20, beta1=0.9, beta2=0.999, warmup=0)
    w = jnp.array([3.0, 4.0])
    state = tx.init(w)
    g1 = jnp.array([30.0, 40.0])
    up, state = tx.update(g1, state, w)
    # AGC: [0.9, 1.2]; LaProp step 1: each coordinate divided by its own debiased RMS -> sign -> [1, 1] * -lr.
    np.testing.assert_allclose(up, [-0.1, -0.1], rtol=1e-5)
    w = w + up
    g2 = jnp.array([0.1, -0.1])  # under the AGC limit
    up, state = tx.update(g2, state, w)
    c = np.array([0.9, 1.2])
    v = 0.999 * 0.001 * c**2 + 0.001 * np.array([0.1, -0.1]) ** 2
    u2 = np.array([0.1, -0.1]) / np.sqrt(v / (1 - 0.999**2))
    m = 0.9 * 0.1 * np.ones(2) + 0.1 * u2
    np.testing.assert_allclose(up, -0.1 * m / (1 - 0.9**2), rtol=1e-5)
    # Normalising first then averaging differs from Adam on the same gradients.
    adam = optax.adam(0.1, eps=1e-20)
    s = adam.init(jnp.zeros(2))
    _, s = adam.update(jnp.array([0.9, 1.2]), s)
    up_adam, _ = adam.update(g2, s)
    assert not np.allclose(up, up_adam, rtol=1e-3)


def test_laprop_alone_and_warmup_schedule():
    tx = scale_by_laprop(0.9, 0.999, 1e-20)
    out, _ = tx.update(jnp.array([-5.0, 1e-8]), tx.init(jnp.zeros(2)))
    np.testing.assert_allclose(out, [-1.0, 1.0], rtol=1e-5)  # tiny gradients still move at full rate (eps 1e-20)
    _, schedule = make_optimizer(lr=4e-5, agc=0.3, eps=1e-20, beta1=0.9, beta2=0.999, warmup=4)
    np.testing.assert_allclose([schedule(jnp.array(i)) for i in range(6)], [1e-5, 2e-5, 3e-5, 4e-5, 4e-5, 4e-5], rtol=1e-6)


def test_block_linear_shared_input_equals_copying_it_into_every_block():
    """The RSSM's first block layer multiplies the input every block shares once, densely; it must equal the
    paper's form: that input concatenated to each block's own slice, through the same (g, i + s, o) kernel."""
    from dreamer_rodent.agent.nets import BlockLinear

    g, i, s, o = 4, 3, 5, 2
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, g, i))
    shared = jax.random.normal(jax.random.PRNGKey(1), (2, 7, s))
    layer = BlockLinear(g, o)
    params = layer.init(jax.random.PRNGKey(2), x, shared)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
    kernel, bias = params["params"]["kernel"], params["params"]["bias"]
    assert kernel.shape == (g, i + s, o)
    copied = jnp.concatenate([x, jnp.broadcast_to(shared[..., None, :], (2, 7, g, s))], -1)
    expected = np.einsum("...gi,gio->...go", np.asarray(copied), np.asarray(kernel)) + np.asarray(bias)
    np.testing.assert_allclose(layer.apply(params, x, shared), expected, rtol=1e-5, atol=1e-5)
    # Without a shared input it is the plain block-diagonal map.
    params_own = layer.init(jax.random.PRNGKey(2), x)
    k_own = params_own["params"]["kernel"]
    np.testing.assert_allclose(layer.apply(params_own, x),
                               np.einsum("...gi,gio->...go", np.asarray(x), np.asarray(k_own)), rtol=1e-5, atol=1e-5)


def test_sample_onehot_draws_each_class_at_its_probability_with_straight_through_gradient():
    probs = jnp.array([[0.05, 0.15, 0.3, 0.5], [0.0, 0.0, 1.0, 0.0]])
    logits = jnp.log(jnp.maximum(probs, 1e-30))
    samples = jax.vmap(lambda k: dists.sample_onehot(k, logits))(jax.random.split(jax.random.PRNGKey(0), 20000))
    assert samples.shape == (20000, 2, 4)
    np.testing.assert_allclose(np.asarray(samples).sum(-1), 1.0, atol=1e-6)  # one-hot (forward value)
    freq = np.asarray(samples).mean(0)
    np.testing.assert_allclose(freq[0], probs[0], atol=0.01)
    assert freq[1, 2] == 1.0  # a class of probability 0 is never drawn
    grad = jax.grad(lambda l: dists.sample_onehot(jax.random.PRNGKey(1), l)[0, 3])(logits)
    np.testing.assert_allclose(grad[0], jax.grad(lambda l: jax.nn.softmax(l, -1)[0, 3])(logits)[0], atol=1e-6)

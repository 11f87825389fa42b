"""The agent's math: symlog, two-hot, categorical latents, KL, bounded normal, returns.

Pure functions on arrays so that each piece is tested against hand-computed
numbers (tests/test_agent_math.py). Everything here computes in float32: the
networks may run in bfloat16, but losses and distributions do not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

f32 = jnp.float32
sg = jax.lax.stop_gradient


def symlog(x):
    """Compresses large magnitudes so one network fits rewards of any scale."""
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x):
    """Inverse of symlog."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


# ---------------------------------------------------------------- two-hot


def bins(num: int, low: float = -20.0, high: float = 20.0):
    """Equally spaced bin centres in symlog space (the paper's -20..20)."""
    return jnp.linspace(low, high, num, dtype=f32)


def _twohot_index(x, bin_centres):
    """Lower bin index and the upper bin's weight, by arithmetic on the equally spaced bins (no [N, bins] search)."""
    n = bin_centres.shape[0]
    lo, hi = bin_centres[0], bin_centres[-1]
    step = (hi - lo) / (n - 1)
    x = jnp.clip(x.astype(f32), lo, hi)
    below = jnp.clip(jnp.floor((x - lo) / step).astype(jnp.int32), 0, n - 2)
    w_hi = jnp.clip((x - (lo + below.astype(f32) * step)) / step, 0.0, 1.0)
    return below, w_hi


def twohot(x, bin_centres):
    """Encodes x (already in bin space) as weights on the two nearest bins.

    The weights are linear in the distance so that sum(w * bins) == x for x
    inside the range; values outside are clipped to the end bins. Bins must be
    equally spaced (as `bins` makes them).
    """
    below, w_hi = _twohot_index(x, bin_centres)
    n = bin_centres.shape[0]
    return (jax.nn.one_hot(below, n, dtype=f32) * (1.0 - w_hi)[..., None]
            + jax.nn.one_hot(below + 1, n, dtype=f32) * w_hi[..., None])


def twohot_loss(logits, target, bin_centres):
    """Cross-entropy of a symlog two-hot head against a raw-space target.

    Written as logsumexp(logits) - sum(w * logits[two bins]) so that no
    [N, bins] two-hot or log-softmax array is built: with 255 bins over every
    imagined state those arrays dominated the update time on CPU.
    """
    logits = logits.astype(f32)
    below, w_hi = _twohot_index(symlog(target), bin_centres)
    l_lo = jnp.take_along_axis(logits, below[..., None], -1)[..., 0]
    l_hi = jnp.take_along_axis(logits, below[..., None] + 1, -1)[..., 0]
    return jax.nn.logsumexp(logits, -1) - (1.0 - w_hi) * l_lo - w_hi * l_hi


def twohot_mean(logits, bin_centres):
    """Decodes a symlog two-hot head to a raw-space value."""
    probs = jax.nn.softmax(logits.astype(f32), -1)
    return symexp(jnp.sum(probs * bin_centres, -1))


# ---------------------------------------------------------------- categorical latents


def unimix_logits(logits, unimix: float):
    """Mixes 1% uniform into each categorical so no class has probability 0 (KL stays finite)."""
    probs = jax.nn.softmax(logits.astype(f32), -1)
    if unimix > 0:
        probs = (1.0 - unimix) * probs + unimix / probs.shape[-1]
    return jnp.log(probs)


def sample_onehot(key, logits):
    """One-hot sample with straight-through gradients to the probabilities."""
    probs = jax.nn.softmax(logits, -1)
    index = jax.random.categorical(key, logits, -1)
    onehot = jax.nn.one_hot(index, logits.shape[-1], dtype=f32)
    return onehot + probs - sg(probs)


def mode_onehot(logits):
    probs = jax.nn.softmax(logits, -1)
    onehot = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=f32)
    return onehot + probs - sg(probs)


def categorical_kl(logits_p, logits_q):
    """KL(p || q) summed over the stochastic variables: logits [..., stoch, classes]."""
    lp = jax.nn.log_softmax(logits_p.astype(f32), -1)
    lq = jax.nn.log_softmax(logits_q.astype(f32), -1)
    return jnp.sum(jnp.exp(lp) * (lp - lq), (-2, -1))


def categorical_entropy(logits):
    lp = jax.nn.log_softmax(logits.astype(f32), -1)
    return -jnp.sum(jnp.exp(lp) * lp, (-2, -1))


def kl_losses(post_logits, prior_logits, free_nats: float):
    """Dynamics and representation losses with free bits.

    dyn trains the prior towards the (frozen) posterior; rep trains the posterior
    towards the (frozen) prior. Both are clipped below at `free_nats` so that a
    KL already under 1 nat gives no gradient and the latents keep information.
    Returns (dyn, rep, raw_kl).
    """
    dyn = categorical_kl(sg(post_logits), prior_logits)
    rep = categorical_kl(post_logits, sg(prior_logits))
    return jnp.maximum(dyn, free_nats), jnp.maximum(rep, free_nats), sg(dyn)


# ---------------------------------------------------------------- actor


def bounded_normal(raw_mean, raw_std, minstd: float, maxstd: float):
    """Mean squashed to (-1, 1) by tanh, std squashed to [minstd, maxstd]."""
    mean = jnp.tanh(raw_mean.astype(f32))
    std = (maxstd - minstd) * jax.nn.sigmoid(raw_std.astype(f32) + 2.0) + minstd
    return mean, std


def normal_logp(x, mean, std):
    """Log-density of a diagonal normal, summed over the action dimensions."""
    z = (x - mean) / std
    return jnp.sum(-0.5 * z * z - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi), -1)


def normal_entropy(std):
    return jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.log(std), -1)


# ---------------------------------------------------------------- returns


def lambda_returns(rewards, conts, values, discount: float, lam: float):
    """TD(lambda) returns of an imagined trajectory, time on the leading axis.

    rewards, conts: [H, ...] for the transitions into states 1..H;
    values: [H+1, ...] for states 0..H. R_H = v_H and
    R_t = r_{t+1} + discount * c_{t+1} * ((1 - lam) * v_{t+1} + lam * R_{t+1}).
    Returns [H, ...] for states 0..H-1.
    """
    def step(ret_next, inp):
        rew, con, val_next = inp
        ret = rew + discount * con * ((1 - lam) * val_next + lam * ret_next)
        return ret, ret

    _, rets = jax.lax.scan(step, values[-1], (rewards, conts, values[1:]), reverse=True)
    return rets


def replay_returns(rewards, is_last, is_terminal, boot, discount: float, lam: float):
    """Lambda returns along replayed sequences, bootstrapped from imagined returns.

    Time on axis 1 ([B, T]). The return at t uses the real reward of t+1 and is
    cut at episode ends: after an `is_last` step it bootstraps from `boot`
    only, and a terminal step has no future. The last step's return is `boot`.
    Returns [B, T-1] for steps 0..T-2 (mask steps with is_last in the loss).
    """
    live = (1.0 - is_terminal[:, 1:]) * discount
    cont = (1.0 - is_last[:, 1:]) * lam
    interm = rewards[:, 1:] + (1.0 - cont) * live * boot[:, 1:]

    def step(ret_next, inp):
        itm, lv, ct = inp
        ret = itm + lv * ct * ret_next
        return ret, ret

    xs = (interm.T, live.T, cont.T)
    _, rets = jax.lax.scan(step, boot[:, -1], xs, reverse=True)
    return rets.T


def return_weights(conts, discount: float):
    """Weight of each imagined state: the discounted chance that the episode is still running.

    conts: [H+1, ...] with conts[0] the start state's (real) continue flag.
    w_t = c_0 * prod_{k=1..t} discount * c_k.
    """
    return jnp.cumprod(jnp.concatenate([conts[:1], discount * conts[1:]], 0), 0)


def retnorm_update(state, returns, rate: float, low_pct: float, high_pct: float, limit: float):
    """Percentile return normalisation with a debiased EMA of the 5th and 95th percentiles.

    state: dict(lo, hi, corr). Returns (new_state, scale) where
    scale = max(limit, hi_ema - lo_ema), so that small returns are not blown up.
    """
    flat = sg(returns).reshape(-1).astype(f32)
    lo = jnp.percentile(flat, low_pct)
    hi = jnp.percentile(flat, high_pct)
    new = {
        "lo": (1 - rate) * state["lo"] + rate * lo,
        "hi": (1 - rate) * state["hi"] + rate * hi,
        "corr": (1 - rate) * state["corr"] + rate,
    }
    scale = jnp.maximum(limit, (new["hi"] - new["lo"]) / new["corr"])
    return new, scale


def retnorm_init():
    return {"lo": jnp.zeros((), f32), "hi": jnp.zeros((), f32), "corr": jnp.zeros((), f32)}

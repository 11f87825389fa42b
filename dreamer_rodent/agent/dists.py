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
    """Bin centres in raw space, symexp of equally spaced points in symlog space (DreamerV3 v2).

    Built from one half and its mirror so that the bins are exactly
    antisymmetric: a uniform head (zero logits) then decodes to exactly 0.
    """
    if num < 2:
        raise ValueError(f"agent.bins is {num}: a two-hot head needs at least 2 bins.")
    if low != -high:
        return symexp(jnp.linspace(low, high, num, dtype=f32))
    half = jnp.linspace(0.0, high, (num + 1) // 2, dtype=f32) if num % 2 else \
        jnp.linspace(high / (num - 1), high, num // 2, dtype=f32)
    pos = symexp(half)
    return jnp.concatenate([-pos[::-1][: num // 2], pos]) if num % 2 else jnp.concatenate([-pos[::-1], pos])


def _twohot_index(x, bin_centres):
    """Lower bin index and the upper bin's weight for raw-space x, split in raw space.

    The bins are symexp of equally spaced points, so the bracketing pair is found
    by arithmetic in symlog space (no [N, bins] search) and then corrected by one
    bin either way for float rounding; the weight is linear in raw space, so
    w_lo * b_lo + w_hi * b_hi == x inside the range (values outside clip to the end bins).
    """
    n = bin_centres.shape[0]
    x = jnp.clip(x.astype(f32), bin_centres[0], bin_centres[-1])
    lo, hi = symlog(bin_centres[0]), symlog(bin_centres[-1])
    step = (hi - lo) / (n - 1)
    below = jnp.clip(jnp.floor((symlog(x) - lo) / step).astype(jnp.int32), 0, n - 2)
    below = jnp.where(bin_centres[below] > x, below - 1, below)
    below = jnp.where(bin_centres[jnp.clip(below + 1, 0, n - 1)] < x, below + 1, below)
    below = jnp.clip(below, 0, n - 2)
    b_lo, b_hi = bin_centres[below], bin_centres[below + 1]
    w_hi = jnp.clip((x - b_lo) / (b_hi - b_lo), 0.0, 1.0)
    return below, w_hi


def twohot(x, bin_centres):
    """Encodes raw-space x as weights on the two nearest bins (sum(w * bins) == x)."""
    below, w_hi = _twohot_index(x, bin_centres)
    n = bin_centres.shape[0]
    return (jax.nn.one_hot(below, n, dtype=f32) * (1.0 - w_hi)[..., None]
            + jax.nn.one_hot(below + 1, n, dtype=f32) * w_hi[..., None])


def twohot_loss(logits, target, bin_centres):
    """Cross-entropy of a two-hot head against a raw-space target.

    Written as logsumexp(logits) - sum(w * logits[two bins]) so that no
    [N, bins] two-hot or log-softmax array is built: with 255 bins over every
    imagined state those arrays dominated the update time on CPU.
    """
    logits = logits.astype(f32)
    below, w_hi = _twohot_index(target, bin_centres)
    l_lo = jnp.take_along_axis(logits, below[..., None], -1)[..., 0]
    l_hi = jnp.take_along_axis(logits, below[..., None] + 1, -1)[..., 0]
    return jax.nn.logsumexp(logits, -1) - (1.0 - w_hi) * l_lo - w_hi * l_hi


def twohot_mean(logits, bin_centres):
    """The head's expected value in raw space: sum(p * bins), bins antisymmetric.

    The mean of the outcomes, not symexp of a symlog-space mean (which reads a
    50/50 chance of -80 and 0 as -7.9 instead of -40). With bins of +-5e8 a
    plain float32 sum is swamped by rounding (one ulp of a far bin's
    probability is worth ~1), so each bin is paired with its mirror and the sum
    is taken over b_k * (p_k - p_-k), with the difference computed from the
    logits (exp(a) - exp(b) = exp(a) * -expm1(b - a)): its error scales with
    the asymmetry itself, and a head with equal logits reads exactly 0.
    """
    logits = logits.astype(f32)
    n = bin_centres.shape[0]
    m = n // 2
    top = jax.lax.stop_gradient(jnp.max(logits, -1, keepdims=True))
    norm = jnp.sum(jnp.exp(logits - top), -1)
    pos = logits[..., m + n % 2:] - top
    neg = logits[..., :m][..., ::-1] - top
    # exp(pos) - exp(neg), from whichever side is larger; the clamps keep the other branch finite (and its gradient).
    upper = pos >= neg
    from_pos = jnp.exp(pos) * -jnp.expm1(jnp.where(upper, neg - pos, 0.0))
    from_neg = jnp.exp(neg) * -jnp.expm1(jnp.where(upper, 0.0, pos - neg))
    diff = jnp.where(upper, from_pos, -from_neg)
    return jnp.sum(bin_centres[m + n % 2:] * diff, -1) / norm


# ---------------------------------------------------------------- categorical latents


def unimix_logits(logits, unimix: float):
    """Mixes 1% uniform into each categorical so no class has probability 0 (KL stays finite)."""
    probs = jax.nn.softmax(logits.astype(f32), -1)
    if unimix > 0:
        probs = (1.0 - unimix) * probs + unimix / probs.shape[-1]
    return jnp.log(probs)


def sample_onehot(key, logits):
    """One-hot sample with straight-through gradients to the probabilities.

    Drawn by inverting the cumulative probabilities with one uniform number per
    categorical, not Gumbel-max with one per class: the same distribution from
    1/classes the random bits (random bits are most of the cost on a CPU).
    """
    probs = jax.nn.softmax(logits, -1)
    u = jax.random.uniform(key, logits.shape[:-1] + (1,), probs.dtype)
    index = jnp.minimum(jnp.sum(jnp.cumsum(probs, -1) < u, -1), logits.shape[-1] - 1)
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
    """Percentile return normalisation: an EMA of the 5th and 95th percentiles, not debiased.

    state: dict(lo, hi), starting at 0. Returns (new_state, scale) where
    scale = max(limit, hi_ema - lo_ema), so that small returns are not blown up.
    Like DreamerV3 (v1 and v2) the EMA is not debiased: in the first updates the
    range is small, the scale sits at `limit` and advantages are not inflated.
    """
    flat = sg(returns).reshape(-1).astype(f32)
    lo = jnp.percentile(flat, low_pct)
    hi = jnp.percentile(flat, high_pct)
    new = {"lo": (1 - rate) * state["lo"] + rate * lo, "hi": (1 - rate) * state["hi"] + rate * hi}
    scale = jnp.maximum(limit, new["hi"] - new["lo"])
    return new, scale


def retnorm_init():
    return {"lo": jnp.zeros((), f32), "hi": jnp.zeros((), f32)}

"""The optimiser: unit-wise adaptive gradient clipping, then LaProp, then a warmed-up learning rate.

LaProp (Ziyin et al. 2020) divides the gradient by the root of its second
moment *before* the momentum average, unlike Adam, so momentum averages
already-normalised steps; with eps 1e-20 a parameter with tiny gradients still
moves at the learning rate. AGC (Brock et al. 2021) clips each unit's gradient
to a fraction of that unit's weight norm, so no single update can change a
layer by more than ~30%.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def _unit_norm(x):
    """Norm per output unit: over all axes but the last; a vector or scalar is one unit."""
    x = x.astype(jnp.float32)
    if x.ndim <= 1:
        return jnp.sqrt(jnp.sum(x * x))
    return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(x.ndim - 1)), keepdims=True))


def adaptive_clip(clip: float, pmin: float = 1e-3) -> optax.GradientTransformation:
    """Scales each unit's gradient down to at most clip * max(||w_unit||, pmin)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params):
        if params is None:
            raise ValueError("adaptive_clip needs the parameters: call tx.update(grads, state, params).")

        def one(g, p):
            limit = clip * jnp.maximum(_unit_norm(p), pmin)
            norm = _unit_norm(g)
            factor = jnp.minimum(1.0, limit / jnp.maximum(norm, 1e-30))
            return (g * factor).astype(g.dtype)

        return jax.tree.map(one, updates, params), state

    return optax.GradientTransformation(init, update)


class LapropState(NamedTuple):
    count: jax.Array
    mom: optax.Updates
    rms: optax.Updates


def scale_by_laprop(beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-20) -> optax.GradientTransformation:
    """g / (sqrt(v_hat) + eps), then a debiased momentum average of that."""

    def init(params):
        zeros = lambda p: jnp.zeros_like(p, jnp.float32)
        return LapropState(jnp.zeros((), jnp.int32), jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(jnp.float32)
        rms = jax.tree.map(lambda v, g: beta2 * v + (1 - beta2) * jnp.square(g.astype(jnp.float32)), state.rms, updates)
        scaled = jax.tree.map(
            lambda g, v: g.astype(jnp.float32) / (jnp.sqrt(v / (1 - beta2**t)) + eps), updates, rms
        )
        mom = jax.tree.map(lambda m, u: beta1 * m + (1 - beta1) * u, state.mom, scaled)
        out = jax.tree.map(lambda m: m / (1 - beta1**t), mom)
        return out, LapropState(count, mom, rms)

    return optax.GradientTransformation(init, update)


def warmup_schedule(lr: float, warmup: int):
    """Linear ramp to lr over `warmup` updates, then constant; `step` counts earlier updates."""
    if warmup <= 0:
        return lambda step: jnp.asarray(lr, jnp.float32)
    return lambda step: lr * jnp.minimum(1.0, (jnp.asarray(step).astype(jnp.float32) + 1.0) / warmup)


def make_optimizer(lr: float, agc: float, eps: float, beta1: float, beta2: float, warmup: int):
    """AGC -> LaProp -> -lr(step). Returns (optax transformation, schedule)."""
    schedule = warmup_schedule(lr, warmup)
    parts = []
    if agc > 0:
        parts.append(adaptive_clip(agc))
    parts += [scale_by_laprop(beta1, beta2, eps), optax.scale_by_schedule(lambda step: -schedule(step))]
    return optax.chain(*parts), schedule

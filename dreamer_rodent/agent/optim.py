"""The optimiser: unit-wise adaptive gradient clipping, then LaProp, then a warmed-up learning rate.

LaProp (Ziyin et al. 2020) divides the gradient by the root of its second
moment *before* the momentum average, unlike Adam, so momentum averages
already-normalised steps; with eps 1e-20 a parameter with tiny gradients still
moves at the learning rate. AGC (Brock et al. 2021) clips each parameter
tensor's gradient to a fraction of that tensor's norm, as DreamerV3 v2 does
(not per output unit, which clipped each unit of a layer on its own and so
changed the direction of the layer's gradient).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def _norm(x):
    x = x.astype(jnp.float32)
    return jnp.sqrt(jnp.sum(x * x))


def adaptive_clip(clip: float, pmin: float = 1e-3) -> optax.GradientTransformation:
    """Scales each tensor's gradient down to at most clip * max(||w||, pmin) (one norm per parameter tensor)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params):
        if params is None:
            raise ValueError("adaptive_clip needs the parameters: call tx.update(grads, state, params).")

        def one(g, p):
            limit = clip * jnp.maximum(_norm(p), pmin)
            factor = jnp.minimum(1.0, limit / jnp.maximum(_norm(g), 1e-30))
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


def make_partitioned(groups: dict, label_of):
    """One optimiser per parameter group: `groups` maps a label to make_optimizer's kwargs.

    `label_of(name)` gives the label of a top-level parameter group. Returns
    (transformation, {label: schedule}). Used to give the world model and the
    actor-critic their own learning rates.
    """
    txs, schedules = {}, {}
    for label, kwargs in groups.items():
        txs[label], schedules[label] = make_optimizer(**kwargs)
    labels = lambda params: {name: jax.tree.map(lambda _: label_of(name), sub) for name, sub in params.items()}
    return optax.multi_transform(txs, labels), schedules

"""Networks: RMS-normalised layers, per-modality encoders/decoders, the block-GRU RSSM, heads.

Parameters are float32; each layer casts its inputs and kernels to the compute
dtype (bfloat16 or float32) and normalises in float32. All modules are
flax.linen and used through `Nets.apply(..., method=...)` so the agent stays a
set of pure functions over the parameter pytree.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamer_rodent.agent import dists

f32 = jnp.float32


class RMSNorm(nn.Module):
    eps: float = 1e-4  # a zero input (the reset state) would otherwise get a 1e3 gradient

    @nn.compact
    def __call__(self, x):
        dtype = x.dtype
        x = x.astype(f32)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), f32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + self.eps) * scale
        return x.astype(dtype)


class Layer(nn.Module):
    """Linear (with bias) -> RMSNorm -> SiLU.

    The bias is not redundant: RMSNorm(W x) is the same for x and 2 x, so without
    it a layer sees only the direction of its input. The magnitude of an action,
    of the egocentric target vector (the distance) or of a velocity would be lost.
    """

    units: int
    dtype: Any = f32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.units, use_bias=True, dtype=self.dtype, param_dtype=f32)(x.astype(self.dtype))
        return nn.silu(RMSNorm()(x))


class MLP(nn.Module):
    layers: int
    units: int
    dtype: Any = f32

    @nn.compact
    def __call__(self, x):
        for i in range(self.layers):
            x = Layer(self.units, self.dtype, name=f"layer{i}")(x)
        return x


class Out(nn.Module):
    """Output projection in float32; `zero` starts the head at a uniform/zero prediction.

    `scale` is the variance scale of a truncated normal over fan-in (std sqrt(scale / fan_in)).
    """

    units: int
    zero: bool = False
    scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        if self.zero:
            init = nn.initializers.zeros
        else:
            init = nn.initializers.variance_scaling(self.scale, "fan_in", "truncated_normal")
        return nn.Dense(self.units, kernel_init=init, dtype=f32, param_dtype=f32)(x.astype(f32))


class BlockLinear(nn.Module):
    """Block-diagonal linear map: [..., g, i] -> [..., g, o] with g independent weight blocks.

    `shared` [..., s] is an input every block reads besides its own (the RSSM's
    embedded stoch and action): the result is that of concatenating it to each
    block's input, [..., g, i + s] with a (g, i + s, o) kernel, but it is
    multiplied once as one dense [s, g * o] matrix instead of being copied g
    times into a batched product (1.5x the RSSM step on a CPU, eval/RESULTS.md).
    Blocks lead the batched product: XLA's CPU dot runs faster that way round.
    """

    blocks: int
    out_per_block: int
    dtype: Any = f32
    separate_bias: bool = False  # True: return (product, bias [g, o]) for the caller to add where it is cheapest

    @nn.compact
    def __call__(self, x, shared=None):
        g, i = x.shape[-2:]
        assert g == self.blocks, (g, self.blocks)
        extra = 0 if shared is None else shared.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=1, out_axis=2),
            (g, i + extra, self.out_per_block), f32,
        ).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (g, self.out_per_block), f32)
        y = jnp.einsum("g...i,gio->g...o", jnp.moveaxis(x.astype(self.dtype), -2, 0), kernel[:, :i])
        y = jnp.moveaxis(y, 0, -2)
        if shared is not None:
            dense = jnp.transpose(kernel[:, i:], (1, 0, 2)).reshape(extra, g * self.out_per_block)
            y = y + (shared.astype(self.dtype) @ dense).reshape(y.shape)
        if self.separate_bias:
            return y, bias
        return y + bias.astype(self.dtype)


class ImageEncoder(nn.Module):
    """Strided convolutions halve the resolution per stage; output flattened."""

    depth: int
    mults: Sequence[int]
    kernel: int
    dtype: Any = f32

    @nn.compact
    def __call__(self, img):
        x = img.astype(self.dtype) / 255.0 - 0.5
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        for i, mult in enumerate(self.mults):
            x = nn.Conv(self.depth * mult, (self.kernel, self.kernel), strides=2, padding="SAME", use_bias=True,
                        dtype=self.dtype, param_dtype=f32, name=f"conv{i}")(x)
            x = nn.silu(RMSNorm(name=f"norm{i}")(x))
        return x.reshape(lead + (-1,))


class ImageDecoder(nn.Module):
    """Mirror of ImageEncoder: a linear map to the smallest grid, then strided transposed convs."""

    depth: int
    mults: Sequence[int]
    kernel: int
    resolution: int
    channels: int
    dtype: Any = f32

    @nn.compact
    def __call__(self, feat):
        stages = len(self.mults)
        side = self.resolution // 2**stages
        lead = feat.shape[:-1]
        x = feat.reshape((-1, feat.shape[-1]))
        top = self.depth * self.mults[-1]
        x = nn.Dense(side * side * top, dtype=self.dtype, param_dtype=f32, name="proj")(x.astype(self.dtype))
        x = x.reshape((-1, side, side, top))
        x = nn.silu(RMSNorm(name="projnorm")(x))
        outs = [self.depth * m for m in reversed(self.mults[:-1])] + [self.channels]
        for i, ch in enumerate(outs):
            last = i == len(outs) - 1
            x = nn.ConvTranspose(ch, (self.kernel, self.kernel), strides=(2, 2), padding="SAME", use_bias=True,
                                 dtype=f32 if last else self.dtype, param_dtype=f32, name=f"deconv{i}")(x)
            if not last:
                x = nn.silu(RMSNorm(name=f"norm{i}")(x))
        x = x.astype(f32) + 0.5  # predicts pixels in [0, 1]
        return x.reshape(lead + x.shape[1:])


class VectorDecoder(nn.Module):
    """MLP to the concatenated (symlog) values of a group of vector keys."""

    layers: int
    units: int
    size: int
    dtype: Any = f32

    @nn.compact
    def __call__(self, feat):
        return Out(self.size)(MLP(self.layers, self.units, self.dtype)(feat))


class Nets(nn.Module):
    """All of the agent's networks. `spec` is a plain dict built by the agent from config and spaces.

    spec keys: image (list of (key, resolution, channels)), groups (list of
    (name, keys, sizes, units)), act_dim, deter, hidden, stoch, classes,
    blocks, dynlayers, imglayers, obslayers, unimix, units, depth, mults,
    kernel, enc_layers, dec_layers, head_layers, ac_layers, bins, minstd, maxstd.
    """

    spec: Any
    dtype: Any = f32

    def setup(self):
        s, dt = self.spec, self.dtype
        self.img_enc = {k: ImageEncoder(s["depth"], s["mults"], s["kernel"], dt) for k, _, _ in s["image"]}
        self.vec_enc = {name: MLP(s["enc_layers"], units, dt) for name, _, _, units in s["groups"]}
        self.img_dec = {
            k: ImageDecoder(s["depth"], s["mults"], s["kernel"], res, ch, dt) for k, res, ch in s["image"]
        }
        self.vec_dec = {
            name: VectorDecoder(s["dec_layers"], units, sum(sizes), dt) for name, _, sizes, units in s["groups"]
        }
        h, d, g = s["hidden"], s["deter"], s["blocks"]
        self.in_deter = Layer(h, dt)
        self.in_stoch = Layer(h, dt)
        self.in_action = Layer(h, dt)
        self.dyn = [BlockLinear(g, d // g, dt) for _ in range(s["dynlayers"])]
        self.dyn_norm = [RMSNorm() for _ in range(s["dynlayers"])]
        self.gates = BlockLinear(g, 3 * d // g, dt, separate_bias=True)
        self.prior_net = MLP(s["imglayers"], h, dt)
        self.prior_out = Out(s["stoch"] * s["classes"])
        self.post_net = MLP(s["obslayers"], h, dt)
        self.post_out = Out(s["stoch"] * s["classes"])
        self.rew_net = MLP(s["head_layers"], s["units"], dt)
        self.rew_out = Out(s["bins"], zero=True)
        self.con_net = MLP(s["head_layers"], s["units"], dt)
        self.con_out = Out(1)
        self.actor_net = MLP(s["ac_layers"], s["units"], dt)
        # DreamerV3's policy outscale 0.01 multiplies the init's std: std 0.01 / sqrt(fan_in), variance 1e-4 / fan_in.
        self.actor_out = Out(2 * s["act_dim"], scale=1e-4)
        self.critic_net = MLP(s["ac_layers"], s["units"], dt)
        self.critic_out = Out(s["bins"], zero=True)

    # ---- encoder / decoder

    def encode(self, obs):
        """obs: dict of raw arrays with shared leading dims. Returns the fused embedding."""
        return fuse(self.encode_parts(obs), self.dtype)

    def encode_parts(self, obs):
        """Each encoder branch's embedding by name (image keys, then the vector groups), in `encode`'s order."""
        parts = {k: self.img_enc[k](obs[k]) for k, _, _ in self.spec["image"]}
        for name, keys, _, _ in self.spec["groups"]:
            x = jnp.concatenate([obs[k].reshape(obs[k].shape[: obs["is_first"].ndim] + (-1,)).astype(f32)
                                 for k in keys], -1)
            parts[name] = self.vec_enc[name](dists.symlog(x))
        return parts

    def decode(self, feat):
        """Returns {image key: pixels in [0,1]} and {group name: symlog prediction}."""
        out = {k: self.img_dec[k](feat) for k, _, _ in self.spec["image"]}
        for name, _, _, _ in self.spec["groups"]:
            out[name] = self.vec_dec[name](feat)
        return out

    # ---- RSSM

    def core(self, deter, stoch, action):
        """Block-diagonal GRU step: the deterministic state after taking `action`."""
        s, g = self.spec, self.spec["blocks"]
        d = s["deter"]
        stoch = stoch.reshape(stoch.shape[:-2] + (-1,))
        action = action / jax.lax.stop_gradient(jnp.maximum(1.0, jnp.abs(action)))
        # Each block reads its own slice of deter and, shared by all blocks, the embedded deter, stoch and action.
        shared = jnp.concatenate([self.in_deter(deter), self.in_stoch(stoch), self.in_action(action)], -1)
        x = deter.reshape(deter.shape[:-1] + (g, d // g)).astype(self.dtype)
        for i, (lin, norm) in enumerate(zip(self.dyn, self.dyn_norm)):
            # One RMS norm over the whole hidden vector (all blocks), as DreamerV3 does, not per block.
            y = lin(x, shared if i == 0 else None)
            x = nn.silu(norm(y.reshape(y.shape[:-2] + (-1,)))).reshape(y.shape)
        x, bias = self.gates(x)  # [..., g, 3 * d / g] and its bias [g, 3 * d / g]
        # The gates on the flat [..., d] view, with the bias added there: XLA's CPU code for this elementwise step
        # ran 7x slower (5.8 against 0.8 ms per imagination step at size1m) with a blocked bias broadcast in it.
        flat = lambda y: y.reshape(y.shape[:-2] + (d,))
        reset, cand, update = (flat(y.astype(f32)) + flat(b[None]) for y, b in
                               zip(jnp.split(x, 3, -1), jnp.split(bias, 3, -1)))
        reset = jax.nn.sigmoid(reset)
        cand = jnp.tanh(reset * cand)
        update = jax.nn.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * deter.astype(f32)

    def _logits(self, x):
        s = self.spec
        x = x.reshape(x.shape[:-1] + (s["stoch"], s["classes"]))
        return dists.unimix_logits(x, s["unimix"])

    def prior(self, deter):
        return self._logits(self.prior_out(self.prior_net(deter)))

    def posterior(self, deter, embed):
        x = jnp.concatenate([deter.astype(self.dtype), embed.astype(self.dtype)], -1)
        return self._logits(self.post_out(self.post_net(x)))

    # ---- heads

    def reward(self, feat):
        return self.rew_out(self.rew_net(feat))

    def cont(self, feat):
        return self.con_out(self.con_net(feat))[..., 0]

    def actor(self, feat):
        raw = self.actor_out(self.actor_net(feat))
        mean, std = jnp.split(raw, 2, -1)
        return dists.bounded_normal(mean, std, self.spec["minstd"], self.spec["maxstd"])

    def critic(self, feat):
        return self.critic_out(self.critic_net(feat))

    def init_all(self, obs, action):
        """Touches every module once (for `init` and shape-only parameter counts)."""
        s = self.spec
        lead = action.shape[:-1]
        deter = jnp.zeros(lead + (s["deter"],), f32)
        stoch = jnp.zeros(lead + (s["stoch"], s["classes"]), f32)
        embed = self.encode(obs)
        deter = self.core(deter, stoch, action)
        post = self.posterior(deter, embed)
        prior = self.prior(deter)
        feat = feature(deter, jax.nn.softmax(post))
        return self.decode(feat), prior, self.reward(feat), self.cont(feat), self.actor(feat), self.critic(feat)


def fuse(parts, dtype):
    """The fused embedding the posterior reads: `Nets.encode_parts`' branches concatenated in their order."""
    return jnp.concatenate([p.astype(dtype) for p in parts.values()], -1)


def feature(deter, stoch):
    """The model state the heads see: deterministic state and flattened one-hot latents."""
    return jnp.concatenate([deter.astype(f32), stoch.reshape(stoch.shape[:-2] + (-1,)).astype(f32)], -1)


def check_resolution(key: str, resolution: int, stages: int):
    if resolution % 2**stages or resolution < 2**stages:
        raise ValueError(
            f"image key '{key}' has resolution {resolution}, which the CNN with {stages} stride-2 stages "
            f"(agent.cnn_mults) cannot halve evenly: use a resolution divisible by {2**stages} "
            f"(env.image_size) or fewer agent.cnn_mults."
        )


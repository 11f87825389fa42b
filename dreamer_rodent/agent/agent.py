"""The DreamerV3 agent: world model, imagination actor-critic and their single jitted update.

The agent object only holds pytrees (parameters, optimiser state, slow critic,
return-normalisation state, RNG keys, step) and jitted pure functions over
them; `train`, `policy` and `report` convert numpy in and out.

Choices where the papers leave room (documented so they can be revisited):
- Actor gradients (`agent.actor_grad`): `backprop` differentiates the
  lambda returns through the frozen world model's imagined rollout with respect
  to reparameterised actions, as the 2023 DreamerV3 does for continuous
  actions; `reinforce` uses log-probability gradients, as the 2025 DreamerV3
  does for every action space, and then imagination runs without gradients (a
  forward-only scan), which is cheaper. REINFORCE is the default: on the
  dm_control benchmark (cartpole swingup, reacher easy; 2 seeds, 50k env steps)
  backprop learned no more per env step, cost 1.8-2.2x per update and drove the
  actor's std to its floor (eval/RESULTS.md). The ball_goto preset keeps
  backprop, with which it learned in 20k env steps where REINFORCE did not.
- Imagined continuation uses the continue head's probability (not its mode).
- Two optimisers of the same kind: `agent.opt` for the world model (encoder,
  decoder, RSSM, reward and continue heads) and `agent.ac_opt` for the actor
  and critic, so that their learning rates can differ. Each loss reaches only
  its own modules: imagination starts from stop-gradient states with frozen
  world-model parameters, and the actor sees stop-gradient inputs, so the
  backprop gradient flows through the imagined dynamics into the actions only.
  The one exception is wanted: the replay value loss trains the world model
  too (`agent.repval_grad`, DreamerV3 v2), which pushes value-relevant cues
  into the latent.
- Reward and critic heads are two-hot over bins at symexp(linspace(-20, 20))
  in raw space and read out as the raw-space mean (v2).
- Reconstruction losses are summed over each branch's dimensions, as in the
  paper, then weighted per branch by `agent.rec_scales` (all 1 by default, the
  paper's choice). The rodent go-to presets weight the 3-number task cue 10x:
  beside ~100 proprio numbers the world model otherwise kept the target with
  2.3x the squared error and the policy did not steer to it (eval/RESULTS.md).
- Imagination starts from every replayed state, or with `agent.imag_last` K
  from the last K of each row only (upstream's option): the imagination and
  actor-critic cost scales with K/T, and the first states of a row, whose
  posterior has not settled after a zero start, seed no rollout. The replay
  value loss runs over the same K steps, whose imagined returns bootstrap it.
- Every training batch starts from the zero latent state unless
  `agent.train_carry` is set, in which case the last posterior state of each
  row is carried into the next batch (for runtimes that replay consecutive
  chunks).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dreamer_rodent.agent import dists
from dreamer_rodent.agent.nets import Nets, check_resolution, feature, fuse
from dreamer_rodent.agent.optim import make_partitioned

f32 = jnp.float32
sg = jax.lax.stop_gradient

BOOKKEEPING_KEYS = ("reward", "is_first", "is_last", "is_terminal")
SENSORY_KEYS = ("image", "vestibular", "proprio")  # the env adapter's non-task sensory keys
GROUPS = (("vestibular", "vestibular_keys", "vestibular_units"), ("proprio", "proprio_keys", "proprio_units"),
          ("task", "task_keys", "task_units"))
MODULE_PREFIXES = (
    ("encoder", ("img_enc", "vec_enc")), ("decoder", ("img_dec", "vec_dec")),
    ("rssm", ("in_", "dyn", "gates", "prior_", "post_")), ("reward", ("rew_",)), ("cont", ("con_",)),
    ("actor", ("actor_",)), ("critic", ("critic_",)),
)
CRITIC = ("critic_net", "critic_out")
ACTOR = ("actor_net", "actor_out")
ACTOR_GRADS = ("backprop", "reinforce")


def optimizer_group(name: str) -> str:
    """Which optimiser a top-level parameter group belongs to: 'ac' (actor, critic) or 'model'."""
    return "ac" if module_of(name) in ("actor", "critic") else "model"


def module_of(name: str) -> str:
    for module, prefixes in MODULE_PREFIXES:
        if name.startswith(prefixes):
            return module
    raise KeyError(f"parameter group '{name}' belongs to no known module")


def compute_dtype(config):
    name = config.jax.compute_dtype
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"jax.compute_dtype is '{name}': use float32 or bfloat16.")
    return jnp.float32 if name == "float32" else jnp.bfloat16


def check_agent_config(config) -> None:
    """Agent settings that no obs space can make right, as a ValueError naming the key and the fix (the training
    command checks them before it starts anything and prints the message as its error line)."""
    ac = config.agent
    if ac.imag_last == 1 or ac.imag_last < 0:
        raise ValueError(f"agent.imag_last is {ac.imag_last}: use 0 (imagine from every replayed state) or "
                         f"K >= 2 (the last K of each row; the replay value loss needs two).")
    if ac.actor_grad not in ACTOR_GRADS:
        raise ValueError(f"agent.actor_grad is '{ac.actor_grad}': use one of {', '.join(ACTOR_GRADS)}.")
    r = ac.rssm
    if r.blocks < 1 or r.deter % r.blocks:
        raise ValueError(f"agent.rssm.deter ({r.deter}) must divide by agent.rssm.blocks ({r.blocks}).")


def build_spec(obs_space: Mapping[str, Any], act_space: Mapping[str, Any], config) -> dict:
    """Decides which obs key goes to which encoder branch and fixes every layer size."""
    check_agent_config(config)
    ac = config.agent
    if "action" not in act_space:
        raise ValueError(f"act_space has no 'action' key (keys: {sorted(act_space)}); the agent acts through 'action'.")
    act = act_space["action"]
    if len(act.shape) != 1 or not np.issubdtype(act.dtype, np.floating):
        raise ValueError(f"act_space['action'] must be a float vector [A], got shape {act.shape} dtype {act.dtype}.")
    image = []
    for key in ac.image_keys:
        if key not in obs_space:
            continue
        space = obs_space[key]
        if len(space.shape) != 3 or space.dtype != np.uint8 or space.shape[0] != space.shape[1]:
            raise ValueError(f"image key '{key}' must be uint8 [H, H, C] (square), got {space.shape} {space.dtype}; "
                             f"remove it from agent.image_keys if it is not an image.")
        check_resolution(key, space.shape[0], len(ac.cnn_mults))
        image.append((key, space.shape[0], space.shape[2]))
    groups = []
    for name, keys_field, units_field in GROUPS:
        keys = [k for k in ac[keys_field] if k in obs_space]
        if keys:
            sizes = [int(np.prod(obs_space[k].shape)) for k in keys]
            groups.append((name, keys, sizes, ac[units_field] or ac.units))
    if not image and not groups:
        raise ValueError(
            f"no observation key feeds the agent: obs_space has {sorted(obs_space)}, the agent reads "
            f"image_keys={list(ac.image_keys)}, vestibular_keys={list(ac.vestibular_keys)}, "
            f"proprio_keys={list(ac.proprio_keys)}, task_keys={list(ac.task_keys)}; set agent.*_keys to match."
        )
    r = ac.rssm
    return dict(
        image=image, groups=groups, act_dim=int(act.shape[0]), deter=r.deter, hidden=r.hidden, stoch=r.stoch,
        classes=r.classes, blocks=r.blocks, dynlayers=r.dynlayers, imglayers=r.imglayers, obslayers=r.obslayers,
        unimix=r.unimix, units=ac.units, depth=ac.depth, mults=tuple(ac.cnn_mults), kernel=ac.cnn_kernel,
        enc_layers=ac.enc_layers, dec_layers=ac.dec_layers, head_layers=ac.head_layers, ac_layers=ac.ac_layers,
        bins=ac.bins, minstd=ac.minstd, maxstd=ac.maxstd,
    )


def with_task_keys(config, obs_space: Mapping[str, Any]):
    """`config` with every task key of the env's obs space added to `agent.task_keys`.

    The env adapter emits each task observable under its own name (`target`;
    `origin` in escape_bowl; `task_state` and `target` in two_touch; ...). A key
    that no `agent.*_keys` list names would never reach the agent, so an obs key
    that is not bookkeeping, `log/`, a sensory group or already claimed is a task
    key and goes to the task encoder. Train and eval both build their agent
    through this, so a run's config.yaml rebuilds the same agent.
    """
    ac = config.agent
    claimed = set(ac.image_keys) | set(ac.vestibular_keys) | set(ac.proprio_keys) | set(ac.task_keys)
    extra = [k for k, space in obs_space.items()
             if k not in claimed and k not in BOOKKEEPING_KEYS and k not in SENSORY_KEYS and not k.startswith("log/")
             and len(space.shape) <= 1 and np.issubdtype(space.dtype, np.floating)]
    if not extra:
        return config
    return config.update({"agent.task_keys": list(ac.task_keys) + extra})


def obs_keys(spec) -> list[str]:
    return [k for k, _, _ in spec["image"]] + [k for _, keys, _, _ in spec["groups"] for k in keys]


def dummy_inputs(spec, obs_space, lead=(1,)):
    obs = {k: jnp.zeros(lead + tuple(obs_space[k].shape), obs_space[k].dtype) for k in obs_keys(spec)}
    obs["is_first"] = jnp.zeros(lead, bool)
    return obs, jnp.zeros(lead + (spec["act_dim"],), f32)


def count_params(obs_space, act_space, config) -> dict[str, int]:
    """Parameter counts per module and in total, from shapes only (nothing is allocated)."""
    spec = build_spec(obs_space, act_space, config)
    nets = Nets(spec, compute_dtype(config))
    obs, act = dummy_inputs(spec, obs_space)
    shapes = jax.eval_shape(lambda k: nets.init(k, obs, act, method=Nets.init_all), jax.random.PRNGKey(0))
    return _counts(shapes["params"])


def _counts(params) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, sub in params.items():
        module = module_of(name)
        counts[module] = counts.get(module, 0) + sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sub))
    counts["total"] = sum(counts.values())
    return counts


def _path_name(path) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)


class Agent:
    """DreamerV3. See the module docstring and dreamer_rodent/agent/__init__.py for the API."""

    def __init__(self, obs_space, act_space, config, mesh: jax.sharding.Mesh | None = None):
        self.config = config
        self.ac = config.agent
        self.obs_space, self.act_space = dict(obs_space), dict(act_space)
        self.dtype = compute_dtype(config)
        self.spec = build_spec(self.obs_space, self.act_space, config)
        self.nets = Nets(self.spec, self.dtype)
        self.keys = obs_keys(self.spec)
        branches = [k for k, _, _ in self.spec["image"]] + [name for name, _, _, _ in self.spec["groups"]]
        # What policy(..., record=True) returns under "internals", in _policy_step's order.
        self.internal_names = ["deter", "stoch_probs", "stoch", *[f"embed/{b}" for b in branches], "actor_mean",
                               "actor_std", "value", "reward", "cont"]
        self.ignored_keys = sorted(k for k in self.obs_space
                                   if k not in self.keys and k not in BOOKKEEPING_KEYS and not k.startswith("log/"))
        self.bins = dists.bins(self.ac.bins)
        self.discount = 1.0 - 1.0 / self.ac.horizon
        groups = {label: dict(lr=o.lr, agc=o.agc, eps=o.eps, beta1=o.beta1, beta2=o.beta2, warmup=o.warmup)
                  for label, o in (("model", self.ac.opt), ("ac", self.ac.ac_opt))}
        self.opt, self.schedules = make_partitioned(groups, optimizer_group)
        if mesh is not None:
            if "data" not in mesh.axis_names:
                raise ValueError(f"the mesh has axes {mesh.axis_names}; the agent splits the batch over an axis named 'data'.")
            # Automatic (GSPMD) partitioning: the code is written for global shapes, and jax.make_mesh's default
            # explicit axes would demand sharding annotations on every gather and reshape.
            mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                                     axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
        self.mesh = mesh
        if mesh is not None:
            self._replicated = NamedSharding(mesh, P())
            self._sharded = NamedSharding(mesh, P("data"))
        else:
            self._replicated = self._sharded = None

        key = jax.random.PRNGKey(config.seed)
        init_key, train_key, policy_key = jax.random.split(key, 3)
        obs, act = dummy_inputs(self.spec, self.obs_space)
        params = jax.jit(lambda k: self.nets.init(k, obs, act, method=Nets.init_all))(init_key)["params"]
        params = jax.tree.map(lambda x: x.astype(f32), params)
        state = {
            "params": params,
            "opt": self.opt.init(params),
            "slow": jax.tree.map(jnp.copy, {k: params[k] for k in CRITIC}),  # own buffers: state is donated
            "retnorm": dists.retnorm_init(),
            "step": jnp.zeros((), jnp.int32),
            "key": train_key,
        }
        self._state = self._replicate(state)
        self._policy_key = policy_key
        self._posterior = None
        self._train = jax.jit(self._train_step, donate_argnums=(0, 1))
        self._policy = jax.jit(self._policy_step, static_argnames=("sample", "record"))
        self._report = jax.jit(self._report_step)
        self._copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))

    # ------------------------------------------------------------------ public API

    def init_policy(self, batch_size: int):
        return self._zero_carry(batch_size)

    def policy(self, carry, obs, mode: str = "train", record: bool = False, params=None):
        """One action per batch row. `record=True` also returns the agent's internals for that step under
        "internals" (`internal_names`: the RSSM state, each encoder branch, the actor's mean and std, the critic's
        value, the predicted reward and continue), computed by the same function, so the action is the same.
        `params` (from `policy_params`) acts with that snapshot instead of the live parameters, which an update
        on another thread may be consuming (the train step donates them)."""
        if mode not in ("train", "eval"):
            raise ValueError(f"policy mode is '{mode}': use 'train' (sample actions) or 'eval' (take the mode).")
        obs = self._select(obs, self.keys + ["is_first"], "policy obs")
        self._policy_key, key = jax.random.split(self._policy_key)
        params = self._state["params"] if params is None else params
        carry, action, internals = self._policy(params, carry, obs, key, sample=(mode == "train"), record=record)
        out = {"action": np.asarray(action, np.float32)}
        if record:
            out["internals"] = {k: np.asarray(v) for k, v in jax.device_get(internals).items()}
        return carry, out

    def policy_params(self):
        """A copy of the current parameters for `policy(..., params=)`: its own buffers, which no later update
        donates, so a thread can act with it while the learner trains."""
        return self._copy(self._state["params"])

    def init_train(self, batch_size: int):
        return self._put(self._zero_carry(batch_size), self._sharded, batch_size)

    def train(self, carry, batch, context=None):
        """One update on `batch` [B, T]. Each row starts from the zero latent, or, given `context` (the replayed
        step before each row, with the latents the replay keeps: see `latent_record`), from that step's latent
        and action, so that no row's first states are the unsettled posterior of a blank start."""
        batch = self._train_batch(batch)
        size = batch["is_first"].shape[0]
        if context is not None:
            carry = self._context_carry(context)
        elif not self.ac.train_carry:
            carry = self._zero_carry(size)
        carry = self._put(carry, self._sharded, size)
        self._state, carry, metrics, self._posterior = self._train(self._state, carry, batch)
        return carry, {k: float(v) for k, v in jax.device_get(metrics).items()}

    def latent_record(self, carry=None, size: int | None = None) -> dict[str, np.ndarray]:
        """The latents a replay keeps per step: from a policy carry, or blank (`latent/valid` False) for `size` steps."""
        s = self.spec
        if carry is None:
            return {"latent/deter": np.zeros((size, s["deter"]), np.float16),
                    "latent/stoch": np.zeros((size, s["stoch"]), np.uint8), "latent/valid": np.zeros(size, bool)}
        deter, stoch = jax.device_get((carry["deter"], carry["stoch"]))
        return {"latent/deter": np.asarray(deter, np.float16), "latent/stoch": np.argmax(stoch, -1).astype(np.uint8),
                "latent/valid": np.ones(len(deter), bool)}

    def posterior_record(self) -> dict[str, np.ndarray]:
        """The last update's posterior latents of every replayed step [B, T, ...], in `latent_record`'s layout."""
        post = jax.device_get(self._posterior)
        return {"latent/deter": np.asarray(post["deter"]), "latent/stoch": np.asarray(post["stoch"]),
                "latent/valid": np.ones(post["stoch"].shape[:2], bool)}

    def _context_carry(self, context):
        s = self.spec
        valid = np.asarray(context["latent/valid"], np.float32)[:, None]
        stoch = np.eye(s["classes"], dtype=np.float32)[np.asarray(context["latent/stoch"], np.int64)]
        return {"deter": jnp.asarray(np.asarray(context["latent/deter"], np.float32) * valid),
                "stoch": jnp.asarray(stoch * valid[..., None]),
                "action": jnp.asarray(np.asarray(context["action"], np.float32) * valid)}

    def report(self, batch) -> dict:
        batch = self._train_batch(batch)
        metrics, videos = self._report(self._state, batch)
        out = {k: float(v) for k, v in jax.device_get(metrics).items()}
        out.update({k: np.asarray(v) for k, v in jax.device_get(videos).items()})
        return out

    def save(self) -> dict[str, np.ndarray]:
        state = dict(self._state, policy_key=self._policy_key)
        leaves, _ = jax.tree_util.tree_flatten_with_path(state)
        return {_path_name(path): np.asarray(jax.device_get(x)) for path, x in leaves}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        state = dict(self._state, policy_key=self._policy_key)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
        names = [_path_name(path) for path, _ in leaves]
        missing = [n for n in names if n not in arrays]
        if missing:
            raise KeyError(f"agent.load: {len(missing)} arrays missing, e.g. {missing[:5]}; the checkpoint was saved by "
                           f"a different agent configuration (compare agent.* in its config.yaml) or by an older "
                           f"dreamer_rodent (layers gained biases on 2026-11-21; on 2026-12-01 the optimiser split "
                           f"in two and the return normalisation lost its debiasing: retrain, or check out that "
                           f"version).")
        extra = sorted(set(arrays) - set(names))
        if extra:
            raise KeyError(f"agent.load: unexpected arrays {extra[:5]} (of {len(extra)}); the checkpoint was saved by a "
                           f"different agent configuration.")
        new = []
        for name, (_, old) in zip(names, leaves):
            value = np.asarray(arrays[name])
            if value.shape != tuple(old.shape):
                raise ValueError(f"agent.load: '{name}' has shape {value.shape} in the checkpoint but {tuple(old.shape)} "
                                 f"in this agent; the model sizes differ (check agent.* and the size preset).")
            new.append(jnp.asarray(value, old.dtype))
        state = jax.tree_util.tree_unflatten(treedef, new)
        self._policy_key = state.pop("policy_key")
        self._state = self._replicate(state)

    def param_count(self, per_module: bool = False):
        counts = _counts(self._state["params"])
        return counts if per_module else counts["total"]

    @property
    def step(self) -> int:
        return int(self._state["step"])

    # ------------------------------------------------------------------ host-side helpers

    def _zero_carry(self, batch_size: int):
        s = self.spec
        return {
            "deter": jnp.zeros((batch_size, s["deter"]), f32),
            "stoch": jnp.zeros((batch_size, s["stoch"], s["classes"]), f32),
            "action": jnp.zeros((batch_size, s["act_dim"]), f32),
        }

    def _replicate(self, tree):
        return tree if self._replicated is None else jax.device_put(tree, self._replicated)

    def _put(self, tree, sharding, batch_size):
        if sharding is None:
            return tree
        devices = self.mesh.shape["data"]
        if batch_size % devices:
            raise ValueError(f"batch size {batch_size} does not divide by the {devices} devices of the mesh's 'data' "
                             f"axis: use a batch_size that is a multiple of {devices}.")
        return jax.device_put(tree, sharding)

    def _select(self, data, keys, what):
        missing = [k for k in keys if k not in data]
        if missing:
            raise KeyError(f"{what} lacks keys {missing} (has {sorted(data)}); the agent was built for obs keys {self.keys}.")
        return {k: np.asarray(data[k]) for k in keys}

    def _train_batch(self, batch):
        batch = self._select(batch, self.keys + list(BOOKKEEPING_KEYS) + ["action"], "train batch")
        if batch["action"].ndim != 3 or batch["action"].shape[-1] != self.spec["act_dim"]:
            raise ValueError(f"batch['action'] must be [B, T, {self.spec['act_dim']}], got {batch['action'].shape}.")
        return self._put(batch, self._sharded, batch["is_first"].shape[0])

    # ------------------------------------------------------------------ pure functions

    def _apply(self, params, method, *args):
        return self.nets.apply({"params": params}, *args, method=method)

    def _observe(self, params, embed, first, prev_action, carry, key):
        """Posterior filtering over time. embed [B, T, E]; returns deter, stoch, post logits [B, T, ...]."""
        swap = lambda x: jnp.swapaxes(x, 0, 1)
        keys = jax.random.split(key, first.shape[1])

        def step(c, inp):
            deter, stoch = c
            f, a, e, k = inp
            m = 1.0 - f.astype(f32)[:, None]
            deter = self._apply(params, Nets.core, deter * m, stoch * m[..., None], a * m)
            logits = self._apply(params, Nets.posterior, deter, e)
            stoch = dists.sample_onehot(k, logits)
            return (deter, stoch), (deter, stoch, logits)

        _, outs = jax.lax.scan(step, (carry["deter"], carry["stoch"]), (swap(first), swap(prev_action), swap(embed), keys))
        return tuple(swap(x) for x in outs)

    def _wm_losses(self, params, batch, carry, key):
        ac = self.ac
        obs = {k: batch[k] for k in self.keys + ["is_first"]}
        embed = self._apply(params, Nets.encode, obs)
        action = batch["action"].astype(f32)
        prev_action = jnp.concatenate([carry["action"][:, None], action[:, :-1]], 1)
        deter, stoch, post = self._observe(params, embed, batch["is_first"], prev_action, carry, key)
        prior = self._apply(params, Nets.prior, deter)
        feat = feature(deter, stoch)
        pred = self._apply(params, Nets.decode, feat)
        losses = {}
        for k, _, _ in self.spec["image"]:
            target = batch[k].astype(f32) / 255.0
            losses[f"rec_{k}"] = jnp.sum(jnp.square(pred[k].astype(f32) - target), (-3, -2, -1))
        for name, keys, _, _ in self.spec["groups"]:
            target = jnp.concatenate([batch[k].reshape(batch[k].shape[:2] + (-1,)).astype(f32) for k in keys], -1)
            losses[f"rec_{name}"] = jnp.sum(jnp.square(pred[name].astype(f32) - dists.symlog(target)), -1)
        losses["rew"] = dists.twohot_loss(self._apply(params, Nets.reward, feat), batch["reward"], self.bins)
        con_logit = self._apply(params, Nets.cont, feat).astype(f32)
        con_target = 1.0 - batch["is_terminal"].astype(f32)
        losses["con"] = -(con_target * jax.nn.log_sigmoid(con_logit) + (1 - con_target) * jax.nn.log_sigmoid(-con_logit))
        losses["dyn"], losses["rep"], kl = dists.kl_losses(post, prior, ac.rssm.free_nats)
        total = sum(jnp.mean(v) * self._loss_scale(k) for k, v in losses.items())
        metrics = {f"loss/{k}": jnp.mean(v) for k, v in losses.items()}
        metrics.update({
            "wm/kl": jnp.mean(kl),
            "wm/post_ent": jnp.mean(dists.categorical_entropy(post)),
            "wm/prior_ent": jnp.mean(dists.categorical_entropy(prior)),
            "wm/reward_pred": jnp.mean(dists.twohot_mean(self._apply(sg(params), Nets.reward, sg(feat)), self.bins)),
            "wm/cont_pred": jnp.mean(jax.nn.sigmoid(con_logit)),
        })
        metrics["wm/reward_p95"] = jnp.percentile(batch["reward"].astype(f32), 95.0)
        last = {"deter": deter[:, -1], "stoch": stoch[:, -1], "action": action[:, -1]}
        return total, metrics, (sg(deter), sg(stoch), feat), last

    def _loss_scale(self, name: str) -> float:
        """World-model loss weight: `rec_<branch>` gets loss_scales.rec times its rec_scales factor."""
        scales = self.ac.loss_scales
        if not name.startswith("rec_"):
            return scales[name]
        branch = name[len("rec_"):]
        branch = "image" if any(branch == k for k, _, _ in self.spec["image"]) else branch
        return scales.rec * self.ac.rec_scales[branch]

    def _imagine(self, params, deter, stoch, key, grad: bool):
        """Rollout of the actor in the frozen world model. Returns feats [H+1, N, F], raw actions [H, N, A].

        grad=False: everything frozen (REINFORCE). grad=True: the actor's
        parameters stay live and actions are reparameterised (mean + std * noise),
        so the returns computed from these feats can be differentiated with
        respect to the actor. As in DreamerV3 v1 the actor sees stop-gradient
        states (its gradient reaches it through the actions it takes, not
        through its own later inputs), and an action outside [-1, 1] enters the
        dynamics as a / sg(|a|) (Nets.core), which is the clipped value with the
        gradient scaled by 1/|a| rather than passed straight through.
        """
        frozen = sg(params)
        actor = dict(frozen, **{k: params[k] for k in ACTOR}) if grad else frozen

        def step(c, k):
            deter, stoch = c
            feat = feature(deter, stoch)
            mean, std = self._apply(actor, Nets.actor, sg(feat))
            k1, k2 = jax.random.split(k)
            raw = mean + std * jax.random.normal(k1, mean.shape, f32)
            deter = self._apply(frozen, Nets.core, deter, stoch, raw)
            stoch = dists.sample_onehot(k2, self._apply(frozen, Nets.prior, deter))
            return (deter, stoch), (feat, raw)

        (deter, stoch), (feats, raws) = jax.lax.scan(step, (deter, stoch), jax.random.split(key, self.ac.imag_length))
        feats = jnp.concatenate([feats, feature(deter, stoch)[None]], 0)
        return (feats, raws) if grad else (sg(feats), sg(raws))

    def _ac_losses(self, params, slow, retnorm, batch, deter, stoch, feat, key):
        ac, sc = self.ac, self.ac.loss_scales
        B, T = batch["is_first"].shape
        K = min(ac.imag_last or T, T)  # imagination starts from the last K replayed states of each row
        N = B * K
        tail = lambda x: x[:, -K:]
        starts = lambda x: tail(x).reshape((N,) + x.shape[2:])
        backprop = ac.actor_grad == "backprop"
        feats, raws = self._imagine(params, starts(deter), starts(stoch), key, grad=backprop)
        frozen = sg(params)
        slow_params = dict(frozen, **slow)
        # With backprop, rew/con/values below carry the actor's gradient through feats; the modules are frozen.
        rew = dists.twohot_mean(self._apply(frozen, Nets.reward, feats[1:]), self.bins)
        con = jax.nn.sigmoid(self._apply(frozen, Nets.cont, feats[1:]).astype(f32))
        con0 = 1.0 - starts(batch["is_terminal"]).astype(f32)
        critic_logits = self._apply(params, Nets.critic, sg(feats))
        values = sg(dists.twohot_mean(critic_logits, self.bins))
        live_values = dists.twohot_mean(self._apply(frozen, Nets.critic, feats), self.bins) if backprop else values
        live_rets = dists.lambda_returns(rew, con, live_values, self.discount, ac.lambda_)
        rets = sg(live_rets)
        weights = sg(dists.return_weights(jnp.concatenate([con0[None], con], 0), self.discount))[:-1]
        retnorm, scale = dists.retnorm_update(retnorm, rets, ac.retnorm_rate, ac.retnorm_low, ac.retnorm_high,
                                              ac.retnorm_limit)
        adv = sg((rets - values[:-1]) / scale)
        mean, std = self._apply(params, Nets.actor, sg(feats[:-1]))
        logp = dists.normal_logp(sg(raws), mean, std)
        ent = dists.normal_entropy(std)
        if backprop:
            objective = (live_rets - values[:-1]) / sg(scale)
        else:
            objective = logp * adv
        policy = jnp.mean(weights * (-objective - ac.actent * ent))
        feats = sg(feats)
        slow_mean = sg(dists.twohot_mean(self._apply(slow_params, Nets.critic, feats[:-1]), self.bins))
        value = jnp.mean(weights * (dists.twohot_loss(critic_logits[:-1], rets, self.bins)
                                    + sc.slowreg * dists.twohot_loss(critic_logits[:-1], slow_mean, self.bins)))
        # Replay value loss: the critic on replayed states, towards lambda returns of the real rewards
        # bootstrapped from the imagined returns of each replayed state.
        # Over the same last K steps of each row as imagination (the ones with a bootstrap).
        boot = rets[0].reshape(B, K)
        f = lambda x: tail(x).astype(f32)
        rrets = dists.replay_returns(f(batch["reward"]), f(batch["is_last"]), f(batch["is_terminal"]), boot,
                                     self.discount, ac.lambda_)
        # With agent.repval_grad the loss also trains the world model through the replayed features (v2).
        rep_feat = tail(feat)[:, :-1]
        rep_logits = self._apply(params, Nets.critic, rep_feat if ac.repval_grad else sg(rep_feat))
        rep_slow = sg(dists.twohot_mean(self._apply(slow_params, Nets.critic, sg(rep_feat)), self.bins))
        mask = 1.0 - f(batch["is_last"])[:, :-1]
        repval = jnp.mean(mask * (dists.twohot_loss(rep_logits, rrets, self.bins)
                                  + sc.slowreg * dists.twohot_loss(rep_logits, rep_slow, self.bins)))
        total = sc.policy * policy + sc.value * value + sc.repval * repval
        metrics = {
            "loss/policy": policy, "loss/value": value, "loss/repval": repval,
            "actor/entropy": jnp.mean(ent), "actor/std": jnp.mean(std), "actor/logp": jnp.mean(logp),
            "imag/return": jnp.mean(rets), "imag/value": jnp.mean(values), "imag/reward": jnp.mean(rew),
            "imag/cont": jnp.mean(con), "imag/adv_mag": jnp.mean(jnp.abs(adv)), "imag/weight": jnp.mean(weights),
            "retnorm/scale": scale, "retnorm/lo": retnorm["lo"], "retnorm/hi": retnorm["hi"],
            "replay/return": jnp.mean(rrets),
            # Model exploitation shows as imagination that pays better than the model says replayed states pay.
            "alarm/return_gap": jnp.mean(rets[0]) - jnp.mean(rrets),
        }
        return total, metrics, retnorm

    def _loss(self, params, slow, retnorm, batch, carry, key):
        k_obs, k_img = jax.random.split(key)
        wm, metrics, (deter, stoch, feat), last = self._wm_losses(params, batch, carry, k_obs)
        acl, ac_metrics, retnorm = self._ac_losses(params, slow, retnorm, batch, deter, stoch, feat, k_img)
        metrics.update(ac_metrics)
        metrics["alarm/reward_gap"] = metrics["imag/reward"] - metrics["wm/reward_pred"]
        metrics["alarm/reward_excess"] = metrics["imag/reward"] - metrics.pop("wm/reward_p95")
        metrics["loss/world_model"] = wm
        metrics["loss/total"] = wm + acl
        # The posterior latents of every replayed step, compact, for a replay that keeps them (replay.context).
        posterior = {"deter": deter.astype(jnp.float16), "stoch": jnp.argmax(stoch, -1).astype(jnp.uint8)}
        return wm + acl, (metrics, retnorm, last, posterior)

    def _train_step(self, state, carry, batch):
        key, k_loss = jax.random.split(state["key"])
        params = state["params"]
        grads, (metrics, retnorm, last, posterior) = jax.grad(self._loss, has_aux=True)(
            params, state["slow"], state["retnorm"], batch, carry, k_loss)
        updates, opt = self.opt.update(grads, state["opt"], params)
        params = optax.apply_updates(params, updates)
        rate = self.ac.slow_rate
        slow = jax.tree.map(lambda s, p: s + rate * (p - s), state["slow"], {k: params[k] for k in CRITIC})
        by_module: dict[str, list] = {}
        for name, sub in grads.items():
            by_module.setdefault(module_of(name), []).append(sub)
        for module, subs in by_module.items():
            metrics[f"grad_norm/{module}"] = optax.tree.norm(subs)
        metrics["grad_norm/total"] = optax.tree.norm(grads)
        metrics["update_norm"] = optax.tree.norm(updates)
        metrics["param_norm"] = optax.tree.norm(params)
        metrics["opt/lr"] = self.schedules["model"](state["step"])
        metrics["opt/ac_lr"] = self.schedules["ac"](state["step"])
        new = {"params": params, "opt": opt, "slow": slow, "retnorm": retnorm, "step": state["step"] + 1, "key": key}
        return new, sg(last), metrics, posterior

    def _policy_step(self, params, carry, obs, key, sample: bool, record: bool = False):
        first = obs["is_first"]
        m = 1.0 - first.astype(f32)[:, None]
        deter = self._apply(params, Nets.core, carry["deter"] * m, carry["stoch"] * m[..., None], carry["action"] * m)
        parts = self._apply(params, Nets.encode_parts, obs)
        embed = fuse(parts, self.dtype)  # as Nets.encode
        logits = self._apply(params, Nets.posterior, deter, embed)
        k1, k2 = jax.random.split(key)
        stoch = dists.sample_onehot(k1, logits) if sample else dists.mode_onehot(logits)
        feat = feature(deter, stoch)
        mean, std = self._apply(params, Nets.actor, feat)
        action = mean + std * jax.random.normal(k2, mean.shape, f32) if sample else mean
        action = jnp.clip(action, -1.0, 1.0)
        internals = {}
        if record:
            internals = {
                "deter": deter.astype(f32),
                "stoch_probs": jax.nn.softmax(logits.astype(f32), -1),
                "stoch": jax.nn.one_hot(jnp.argmax(stoch, -1), stoch.shape[-1], dtype=jnp.uint8),  # no ST residue
                **{f"embed/{name}": part.astype(f32) for name, part in parts.items()},
                "actor_mean": mean.astype(f32),
                "actor_std": std.astype(f32),
                "value": dists.twohot_mean(self._apply(params, Nets.critic, feat), self.bins),
                "reward": dists.twohot_mean(self._apply(params, Nets.reward, feat), self.bins),
                "cont": jax.nn.sigmoid(self._apply(params, Nets.cont, feat).astype(f32)),
            }
        return {"deter": deter, "stoch": sg(stoch), "action": action}, action, internals

    def _report_step(self, state, batch):
        """Losses on the batch (no update) and open-loop prediction videos per image key."""
        params = state["params"]
        key_loss, key_obs, key_img = jax.random.split(jax.random.fold_in(state["key"], 1), 3)
        B = batch["is_first"].shape[0]
        carry = self._zero_carry(B)
        _, (metrics, _, _, _) = self._loss(params, state["slow"], state["retnorm"], batch, carry, key_loss)
        videos = {}
        if self.spec["image"]:
            n = min(B, self.ac.report_batch)
            T = batch["is_first"].shape[1]
            ctx = max(1, min(self.ac.report_context, T - 1))
            sub = jax.tree.map(lambda x: x[:n], batch)
            obs = {k: sub[k] for k in self.keys + ["is_first"]}
            embed = self._apply(params, Nets.encode, obs)
            action = sub["action"].astype(f32)
            prev = jnp.concatenate([jnp.zeros_like(action[:, :1]), action[:, :-1]], 1)
            deter, stoch, _ = self._observe(params, embed[:, :ctx], sub["is_first"][:, :ctx], prev[:, :ctx],
                                            self._zero_carry(n), key_obs)

            def step(c, a):
                d, s = c
                d = self._apply(params, Nets.core, d, s, a)
                s = dists.mode_onehot(self._apply(params, Nets.prior, d))
                return (d, s), (d, s)

            _, (d_img, s_img) = jax.lax.scan(step, (deter[:, -1], stoch[:, -1]), jnp.swapaxes(prev[:, ctx:], 0, 1))
            deter = jnp.concatenate([deter, jnp.swapaxes(d_img, 0, 1)], 1)
            stoch = jnp.concatenate([stoch, jnp.swapaxes(s_img, 0, 1)], 1)
            pred = self._apply(params, Nets.decode, feature(deter, stoch))
            for k, _, _ in self.spec["image"]:
                truth = sub[k].astype(f32) / 255.0
                model = jnp.clip(pred[k].astype(f32), 0.0, 1.0)
                error = (model - truth + 1.0) / 2.0
                video = jnp.concatenate([truth, model, error], -2)  # side by side along the width
                videos[f"openloop/{k}"] = (video * 255.0).round().astype(jnp.uint8)
                metrics[f"openloop/{k}_mse"] = jnp.mean(jnp.square(model[:, ctx:] - truth[:, ctx:]))
        return metrics, videos

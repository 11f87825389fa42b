"""Upstream DreamerV3's train step on random data, for `eval/bench_agent.py --upstream DIR`.

Runs under the upstream checkout's own interpreter (DIR/.venv/bin/python: its JAX
and libraries, not ours) and imports its `dreamerv3` package from DIR; nothing
of dreamer_rodent is imported here. It builds upstream's agent at a size preset
with the obs and action spaces of bench_agent's `walker` rows (dm_control
walker: orientations 14, height 1, velocity 9, with `image` 64x64x3 for
`walker_image`; action 6), float32 on the CPU, and times `agent.train` on one
fixed random batch the way bench_agent times ours: the first call (trace and
compile) apart, then calls until `--seconds` have passed. Upstream's JAX
profiler (on by default between updates 100 and 120) is off, and replay context
is off, as in our default: both start each row from a blank latent.

    DIR/.venv/bin/python eval/upstream_step.py --dir DIR --preset size1m --obs walker --seconds 15 --json OUT
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def spaces(elements, np, obs: str):
    f32 = np.float32
    obs_space = {"orientations": elements.Space(f32, (14,)), "height": elements.Space(f32, (1,)),
                 "velocity": elements.Space(f32, (9,)), "reward": elements.Space(f32),
                 "is_first": elements.Space(bool), "is_last": elements.Space(bool),
                 "is_terminal": elements.Space(bool)}
    if obs == "walker_image":
        obs_space["image"] = elements.Space(np.uint8, (64, 64, 3))
    elif obs != "walker":
        raise SystemExit(f"error: obs '{obs}': use walker or walker_image.")
    return obs_space, {"action": elements.Space(f32, (6,), -1.0, 1.0)}


def random_batch(np, spaces_, lead, rng):
    out = {}
    for key, space in spaces_.items():
        shape = tuple(lead) + tuple(space.shape)
        if space.dtype == bool:
            out[key] = rng.random(shape) < 0.01
        elif np.issubdtype(space.dtype, np.integer):
            out[key] = np.zeros(shape, space.dtype) if key != "image" else rng.integers(0, 256, shape, np.uint8)
        elif key == "action":
            out[key] = rng.uniform(-1, 1, shape).astype(space.dtype)
        else:
            out[key] = rng.normal(size=shape).astype(space.dtype)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="a checkout of danijar/dreamerv3")
    parser.add_argument("--preset", default="size1m")
    parser.add_argument("--obs", default="walker", help="walker | walker_image")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(pathlib.Path(args.dir).resolve()))
    import elements
    import jax
    import numpy as np
    import ruamel.yaml as yaml
    from dreamerv3.agent import Agent
    from embodied.jax import internal

    configs = yaml.YAML(typ="safe").load((pathlib.Path(args.dir) / "dreamerv3" / "configs.yaml").read_text())
    config = elements.Config(configs["defaults"]).update(configs[args.preset])
    config = config.update({"jax.platform": "cpu", "jax.compute_dtype": "float32", "jax.prealloc": False,
                            "replay_context": 0})
    jaxcfg = elements.Config({**config.jax, "profiler": False})  # an option of upstream's agent, not in its yaml
    obs_space, act_space = spaces(elements, np, args.obs)
    with tempfile.TemporaryDirectory() as logdir:
        agent = Agent(obs_space, act_space, elements.Config(
            **config.agent, logdir=logdir, seed=0, jax=jaxcfg, batch_size=args.batch,
            batch_length=args.length, replay_context=0, report_length=32, replica=0, replicas=1))
        rng = np.random.default_rng(0)
        data = random_batch(np, {**obs_space, **act_space, **agent.model.ext_space}, (args.batch, args.length), rng)
        carry = agent.init_train(args.batch)

        def step(carry, i):
            # As upstream's own data stream does for every batch (and as ours takes numpy each update).
            batch = {**internal.device_put(data, agent.train_sharded), "seed": agent._seeds(i, agent.train_mirrored)}
            carry, _, mets = agent.train(carry, batch)
            jax.block_until_ready(agent.params)
            return carry, mets

        start = time.perf_counter()
        carry, _ = step(carry, 0)
        compile_s = time.perf_counter() - start
        iters, start = 0, time.perf_counter()
        while iters < 1 or time.perf_counter() - start < args.seconds:
            carry, mets = step(carry, iters + 1)
            iters += 1
        train_s = (time.perf_counter() - start) / iters
        # Model weights only: upstream keeps the optimiser's moments, the slow critic and the return
        # normalisation among its params too.
        params = sum(int(np.prod(v.shape)) for k, v in agent.params.items()
                     if not k.startswith(("opt/", "slowval", "retnorm")))
    row = {"impl": "upstream", "preset": args.preset, "obs": args.obs, "params": params,
           "train_sps": args.batch * args.length / train_s, "train_ms": 1e3 * train_s, "compile_s": compile_s,
           "iters": iters, "load": list(os.getloadavg()), "jax": jax.__version__,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    pathlib.Path(args.json).write_text(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

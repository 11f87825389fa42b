"""Agent throughput: replayed steps/s of training and steps/s of acting, compile time apart.

Self-contained (random batches, no env, no replay) so it can be rerun on any
machine; prints a ready markdown table with the load average.

    python eval/bench_agent.py                       # the RESULTS.md table
    python eval/bench_agent.py --rows size1m:float32:proprio --seconds 20
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import jax
import numpy as np

from dreamer_rodent.agent import Agent, count_params
from dreamer_rodent.config import build_config
from dreamer_rodent.spaces import Space

DEFAULT_ROWS = [
    "debug:float32:proprio", "debug:float32:image", "debug:bfloat16:proprio",
    "size1m:float32:proprio", "size1m:bfloat16:proprio", "size1m:float32:image", "size1m:bfloat16:image",
    "size12m:float32:proprio", "size12m:bfloat16:proprio", "size12m:float32:image", "size12m:bfloat16:image",
]


def spaces(kind: str, image_size: int):
    """A rodent-like obs space: vestibular 12, proprio 100, target 3 (+ an egocentric image); action 38."""
    obs = {
        "vestibular": Space((12,), np.float32), "proprio": Space((100,), np.float32), "target": Space((3,), np.float32),
        "reward": Space((), np.float32), "is_first": Space((), bool), "is_last": Space((), bool),
        "is_terminal": Space((), bool),
    }
    if kind == "image":
        obs["image"] = Space((image_size, image_size, 3), np.uint8)
    elif kind != "proprio":
        raise ValueError(f"obs kind '{kind}': use proprio or image.")
    return obs, {"action": Space((38,), np.float32, -1.0, 1.0)}


def random_batch(obs_space, act_space, lead, rng):
    out = {}
    for key, space in obs_space.items():
        shape = tuple(lead) + space.shape
        if space.dtype == bool:
            out[key] = rng.random(shape) < 0.01
        elif space.dtype == np.uint8:
            out[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            out[key] = rng.normal(size=shape).astype(space.dtype)
    out["action"] = rng.uniform(-1, 1, tuple(lead) + act_space["action"].shape).astype(np.float32)
    return out


def parse_row(row: str):
    """preset:dtype:obs[:actor_grad]; without the fourth field the config's default actor gradient."""
    parts = row.split(":")
    if len(parts) not in (3, 4):
        raise SystemExit(f"error: row '{row}' is not preset:dtype:obs[:actor_grad] (e.g. size1m:float32:proprio:reinforce)")
    preset, dtype, kind = parts[:3]
    flags = {"jax.compute_dtype": dtype}
    if len(parts) == 4:
        flags["agent.actor_grad"] = parts[3]
    config = build_config([preset], flags)
    return preset, dtype, kind, config


def bench_row(preset: str, kind: str, config, batch: int, length: int, envs: int, seconds: float):
    image_size = 16 if preset == "debug" else 64
    obs_space, act_space = spaces(kind, image_size)
    rng = np.random.default_rng(0)
    agent = Agent(obs_space, act_space, config)
    data = random_batch(obs_space, act_space, (batch, length), rng)
    carry = agent.init_train(batch)
    start = time.perf_counter()
    carry, metrics = agent.train(carry, data)
    compile_s = time.perf_counter() - start
    iters, start = 0, time.perf_counter()
    while iters < 1 or time.perf_counter() - start < seconds:
        carry, metrics = agent.train(carry, data)
        iters += 1
    train_s = (time.perf_counter() - start) / iters
    pcarry = agent.init_policy(envs)
    obs = {k: v[:, 0] for k, v in random_batch(obs_space, act_space, (envs, 1), rng).items()}
    start = time.perf_counter()
    pcarry, _ = agent.policy(pcarry, obs)
    pcompile_s = time.perf_counter() - start
    piters, start = 0, time.perf_counter()
    while piters < 10 or time.perf_counter() - start < min(seconds, 5.0):
        pcarry, act = agent.policy(pcarry, obs)
        piters += 1
    policy_s = (time.perf_counter() - start) / piters
    assert np.isfinite(metrics["loss/total"]), metrics
    return {
        "params": agent.param_count(), "train_sps": batch * length / train_s, "train_ms": 1e3 * train_s,
        "compile_s": compile_s, "policy_sps": envs / policy_s, "policy_ms": 1e3 * policy_s,
        "policy_compile_s": pcompile_s, "iters": iters, "load": os.getloadavg(),
    }


def preset_counts():
    obs_space, act_space = spaces("image", 64)
    rows = []
    for name, target in [("size1m", 1), ("size12m", 12), ("size25m", 25), ("size50m", 50), ("size100m", 100),
                         ("size200m", 200), ("size400m", 400)]:
        total = count_params(obs_space, act_space, build_config([name]))["total"]
        rows.append(f"| {name} | {total / 1e6:.2f}M | {100 * (total / 1e6 / target - 1):+.0f}% |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS,
                        help="preset:dtype:obs[:actor_grad] (obs = proprio | image; actor_grad = backprop | reinforce)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--envs", type=int, default=16, help="batch of the policy benchmark")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per row (at least 1 update after the compiling one)")
    parser.add_argument("--no-counts", action="store_true", help="skip the preset parameter-count table")
    args = parser.parse_args()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    cpu = platform.processor() or platform.machine()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s), {os.cpu_count()} cores, "
          f"{cpu}); commit {commit}; batch {args.batch} x length {args.length}; policy batch {args.envs}")
    print(f"load average before: {os.getloadavg()}")
    lines = [
        "| preset | dtype | obs | actor grad | params | train replayed steps/s | ms/update | compile s | "
        "policy steps/s | ms/policy step | policy compile s | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in args.rows:
        preset, dtype, kind, config = parse_row(row)
        r = bench_row(preset, kind, config, args.batch, args.length, args.envs, args.seconds)
        line = (f"| {preset} | {dtype} | {kind} | {config.agent.actor_grad} | {r['params'] / 1e6:.2f}M | {r['train_sps']:,.0f} | {r['train_ms']:.0f} | "
                f"{r['compile_s']:.1f} | {r['policy_sps']:,.0f} | {r['policy_ms']:.2f} | {r['policy_compile_s']:.1f} | "
                f"{r['load'][0]:.2f} |")
        print(line, flush=True)
        lines.append(line)
    print(f"\nload average after: {os.getloadavg()}\n")
    print("\n".join(lines))
    if not args.no_counts:
        print("\nParameter counts (image 64x64x3, vestibular 12, proprio 100, target 3; action 38):\n")
        print("| preset | params | vs name |\n|---|---|---|")
        print("\n".join(preset_counts()))


if __name__ == "__main__":
    main()

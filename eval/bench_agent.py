"""Agent throughput: replayed steps/s of training and steps/s of acting, compile time apart.

Self-contained (random batches, no env, no replay) so it can be rerun on any
machine; prints a ready markdown table with the load average.

    python eval/bench_agent.py                       # the RESULTS.md table
    python eval/bench_agent.py --rows size1m:float32:proprio --seconds 20
    python eval/bench_agent.py --rows size12m:bfloat16:image --flops --peak-tflops 989 --isolate --json out.json
    python eval/bench_agent.py --rows size1m:float32:walker size1m:float32:walker_image --upstream DIR --rounds 2

`--upstream DIR` (a checkout of danijar/dreamerv3 whose own venv is DIR/.venv,
e.g. `python3 -m venv DIR/.venv && DIR/.venv/bin/pip install "jax[cpu]==0.4.33"
chex einops elements granular jaxtyping ninjax "numpy<2" optax==0.2.3 portal
scope tqdm ruamel.yaml`) times upstream's train step (eval/upstream_step.py, in
that venv) right after each of our rows, on the same walker-sized inputs and
model preset, and prints ours over upstream's replayed steps per second.

`--flops` adds the train step's FLOPs from XLA's cost analysis and the achieved
TFLOP/s (model FLOPs utilisation against `--peak-tflops`, the chip's dense peak
for the row's dtype). `--isolate` runs every row in its own process, so that
the peak RSS column is that row's alone. The persistent compilation cache
(`jax.cache_dir`) is on, as in training: "compile s" is a cold compile only the
first time a row runs on a machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # --isolate: the parent must leave the GPU to each row

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dreamer_rodent import host_memory  # noqa: E402
from dreamer_rodent.agent import Agent, count_params  # noqa: E402
from dreamer_rodent.config import build_config  # noqa: E402
from dreamer_rodent.spaces import Space  # noqa: E402

WALKER_KINDS = ("walker", "walker_image")
DEFAULT_ROWS = [
    "debug:float32:proprio", "debug:float32:image", "debug:bfloat16:proprio",
    "size1m:float32:proprio", "size1m:bfloat16:proprio", "size1m:float32:image", "size1m:bfloat16:image",
    "size12m:float32:proprio", "size12m:bfloat16:proprio", "size12m:float32:image", "size12m:bfloat16:image",
]


def spaces(kind: str, image_size: int):
    """A rodent-like obs space: vestibular 12, proprio 100, target 3 (+ an egocentric image); action 38.
    `walker` / `walker_image`: dm_control walker's 24 numbers (+ a 64x64 image) and 6 actions, the inputs of
    the side-by-side with upstream DreamerV3 (eval/upstream_step.py), so that the two models match in size."""
    if kind in WALKER_KINDS:
        obs = {"proprio": Space((24,), np.float32), "reward": Space((), np.float32), "is_first": Space((), bool),
               "is_last": Space((), bool), "is_terminal": Space((), bool)}
        if kind == "walker_image":
            obs["image"] = Space((image_size, image_size, 3), np.uint8)
        return obs, {"action": Space((6,), np.float32, -1.0, 1.0)}
    obs = {
        "vestibular": Space((12,), np.float32), "proprio": Space((100,), np.float32), "target": Space((3,), np.float32),
        "reward": Space((), np.float32), "is_first": Space((), bool), "is_last": Space((), bool),
        "is_terminal": Space((), bool),
    }
    if kind == "image":
        obs["image"] = Space((image_size, image_size, 3), np.uint8)
    elif kind != "proprio":
        raise ValueError(f"obs kind '{kind}': use proprio, image, walker or walker_image.")
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
    """preset:dtype:obs[:actor_grad][:key=value...]; without an actor gradient the config's default.

    Each key=value sets one config key for that row, e.g. `size1m:float32:proprio:reinforce:agent.imag_last=16`.
    """
    parts = row.split(":")
    sets = [p for p in parts if "=" in p]
    parts = [p for p in parts if "=" not in p]
    if len(parts) not in (3, 4):
        fail(f"row '{row}' is not preset:dtype:obs[:actor_grad][:key=value...] "
             f"(e.g. size1m:float32:proprio:reinforce:agent.imag_last=16)")
    preset, dtype, kind = parts[:3]
    flags = {"jax.compute_dtype": dtype}
    if len(parts) == 4:
        flags["agent.actor_grad"] = parts[3]
    for item in sets:
        key, value = item.split("=", 1)
        flags[key] = value  # a string, converted to the key's type as the command line's are
    try:
        config = build_config([preset], flags)
    except (KeyError, ValueError) as exc:
        fail(f"row '{row}': {exc}")
    return preset, dtype, kind, config, ":".join(sets)


def fail(message: str):
    """One error line and exit code 2, as the project's commands end on bad input."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def train_flops(agent, carry, data) -> float | None:
    """FLOPs of one train step as XLA counts them (None where the backend does not say)."""
    batch = agent._train_batch(data)
    carry = agent._put(carry, agent._sharded, batch["is_first"].shape[0])
    cost = agent._train.lower(agent._state, carry, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def peak_rss_gb() -> float:
    """This process's peak resident host memory so far, GiB (Linux reports KiB); not the GPU's."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_row(preset: str, kind: str, config, batch: int, length: int, envs: int, seconds: float,
              flops: bool = False):
    image_size = 16 if preset == "debug" else 64
    obs_space, act_space = spaces(kind, image_size)
    rng = np.random.default_rng(0)
    agent = Agent(obs_space, act_space, config)
    data = random_batch(obs_space, act_space, (batch, length), rng)
    carry = agent.init_train(batch)
    start = time.perf_counter()
    step_flops = train_flops(agent, carry, data) if flops else None  # compiles the step ahead of time
    carry, metrics = agent.train(carry, data)
    compile_s = time.perf_counter() - start  # with --flops: that compile plus the first step (a cache load)
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
        "flops": step_flops, "tflops_per_s": step_flops / train_s / 1e12 if step_flops else None,
        "peak_rss_gb": peak_rss_gb(),
    }


def preset_counts():
    obs_space, act_space = spaces("image", 64)
    rows = []
    for name, target in [("size1m", 1), ("size12m", 12), ("size25m", 25), ("size50m", 50), ("size100m", 100),
                         ("size200m", 200), ("size400m", 400)]:
        total = count_params(obs_space, act_space, build_config([name]))["total"]
        rows.append(f"| {name} | {total / 1e6:.2f}M | {100 * (total / 1e6 / target - 1):+.0f}% |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS,
                        help="preset:dtype:obs[:actor_grad] (obs = proprio | image; actor_grad = backprop | reinforce)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--envs", type=int, default=16, help="batch of the policy benchmark")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per row (at least 1 update after the compiling one)")
    parser.add_argument("--no-counts", action="store_true", help="skip the preset parameter-count table")
    parser.add_argument("--flops", action="store_true", help="FLOPs per update (XLA cost analysis) and TFLOP/s")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the chip's peak TFLOP/s: adds MFU (needs --flops)")
    parser.add_argument("--isolate", action="store_true", help="one process per row (its own peak RSS)")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--platform", default="auto", help="jax.platform for the rows: auto | cpu | gpu")
    parser.add_argument("--upstream", default="", metavar="DIR",
                        help="a checkout of danijar/dreamerv3 with its own venv in DIR/.venv: each row (obs walker "
                             "or walker_image) runs in its own process, then upstream's train step at the same "
                             "preset, in turn, and the ratio is printed")
    parser.add_argument("--rounds", type=int, default=1, help="with --upstream: repeat the interleaved pairs")
    args = parser.parse_args(argv)
    for row in args.rows:  # every row's syntax and keys before the first is measured
        parse_row(row)
    if args.upstream:
        return side_by_side(args)
    if args.platform != "auto":
        jax.config.update("jax_platforms", args.platform)
    cache = os.path.expanduser(str(build_config([]).jax.cache_dir or ""))
    if cache:  # as training does: a rerun (or the --flops lowering) reuses the compiled step
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    cpu = platform.processor() or platform.machine()
    device = jax.devices()[0]
    print(f"jax {jax.__version__} on {device.platform} ({device.device_kind}; {jax.device_count()} device(s), "
          f"{os.cpu_count()} cores, {cpu}); commit {commit}; batch {args.batch} x length {args.length}; "
          f"policy batch {args.envs}")
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows = isolated(args) if args.isolate else [measure(row, args) for row in args.rows]
    print(f"\nload average after: {os.getloadavg()}\n")
    print("\n".join(table(rows, args.peak_tflops)))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "device": device.device_kind,
                                                       "commit": commit}, indent=1) + "\n")
    if not args.no_counts:
        print("\nParameter counts (image 64x64x3, vestibular 12, proprio 100, target 3; action 38):\n")
        print("| preset | params | vs name |\n|---|---|---|")
        print("\n".join(preset_counts()))
    return 0


def measure(row: str, args) -> dict:
    preset, dtype, kind, config, sets = parse_row(row)
    r = bench_row(preset, kind, config, args.batch, args.length, args.envs, args.seconds, flops=args.flops)
    r.update(row=row, preset=preset, dtype=dtype, obs=kind, actor_grad=config.agent.actor_grad, sets=sets,
             load=list(r["load"]))
    print(table([r], args.peak_tflops)[-1], flush=True)
    return r


def side_by_side(args) -> int:
    """Ours and upstream's train step in turn, each in its own process, `--rounds` times: the load hits both alike."""
    root = pathlib.Path(args.upstream)
    python = root / ".venv" / "bin" / "python"
    if not (root / "dreamerv3" / "agent.py").is_file() or not python.is_file():
        fail(f"--upstream {root}: expected a checkout of danijar/dreamerv3 with dreamerv3/agent.py and its own venv "
             f"at {python} (jax 0.4.33 and upstream's requirements).")
    for row in args.rows:
        preset, dtype, kind, _, _ = parse_row(row)
        if kind not in WALKER_KINDS or dtype != "float32":
            fail(f"row '{row}': the side-by-side takes float32 rows with obs walker or walker_image (the inputs "
                 f"upstream gets), e.g. size1m:float32:walker")
    import tempfile

    script = pathlib.Path(__file__).resolve().parent / "upstream_step.py"
    pairs = []
    print("| row | round | ours: params | ours: replayed steps/s | upstream: params | upstream: replayed steps/s | "
          "ratio | load (1 min) |\n|---|---|---|---|---|---|---|---|", flush=True)
    for round_ in range(1, args.rounds + 1):
        for row in args.rows:
            preset, _, kind, _, _ = parse_row(row)
            ours = isolated(argparse.Namespace(**{**vars(args), "rows": [row]}), quiet=True)[0]
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                argv = [str(python), str(script), "--dir", str(root), "--preset", preset, "--obs", kind,
                        "--batch", str(args.batch), "--length", str(args.length), "--seconds", str(args.seconds),
                        "--json", out.name]
                if subprocess.run(argv, stdout=subprocess.DEVNULL).returncode != 0:
                    fail(f"upstream's row '{row}' failed (its output is above).")
                up = json.loads(pathlib.Path(out.name).read_text())
            pairs.append({"row": row, "round": round_, "ours": ours, "upstream": up,
                          "ratio": ours["train_sps"] / up["train_sps"]})
            print(f"| {row} | {round_} | {ours['params'] / 1e6:.3f}M | {ours['train_sps']:,.0f} | "
                  f"{up['params'] / 1e6:.3f}M | {up['train_sps']:,.0f} | {pairs[-1]['ratio']:.2f} | "
                  f"{ours['load'][0]:.2f} / {up['load'][0]:.2f} |", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"pairs": pairs}, indent=1) + "\n")
    return 0


def isolated(args, quiet: bool = False) -> list[dict]:
    """Each row in a child process of this script: its peak RSS is that row's alone."""
    import tempfile

    rows = []
    for row in args.rows:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            argv = [sys.executable, __file__, "--rows", row, "--no-counts", "--json", out.name,
                    "--batch", str(args.batch), "--length", str(args.length), "--envs", str(args.envs),
                    "--seconds", str(args.seconds), "--platform", args.platform,
                    "--peak-tflops", str(args.peak_tflops)] + (["--flops"] if args.flops else [])
            if subprocess.run(argv, stdout=subprocess.DEVNULL).returncode != 0:
                fail(f"row '{row}' failed in its own process (its output is above); the rows before it are printed.")
            rows += json.loads(pathlib.Path(out.name).read_text())["rows"]
        if not quiet:
            print(table(rows[-1:], args.peak_tflops)[-1], flush=True)
    return rows


def table(rows: list[dict], peak_tflops: float = 0.0) -> list[str]:
    lines = [
        "| preset | dtype | obs | actor grad (and set keys) | params | train replayed steps/s | ms/update | compile s | "
        "policy steps/s | ms/policy step | policy compile s | GFLOP/update | TFLOP/s | MFU | peak host RSS GiB | "
        "load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tflops = r.get("tflops_per_s")
        mfu = f"{100 * tflops / peak_tflops:.1f}%" if tflops and peak_tflops > 0 else ""
        gflops = "" if r.get("flops") is None else f"{r['flops'] / 1e9:.1f}"
        lines.append(
            f"| {r['preset']} | {r['dtype']} | {r['obs']} | {' '.join([r['actor_grad']] + r.get('sets', '').split(':')).strip()} | "
            f"{r['params'] / 1e6:.2f}M | "
            f"{r['train_sps']:,.0f} | {r['train_ms']:.0f} | {r['compile_s']:.1f} | {r['policy_sps']:,.0f} | "
            f"{r['policy_ms']:.2f} | {r['policy_compile_s']:.1f} | "
            f"{gflops} | "
            f"{'' if tflops is None else f'{tflops:.3f}'} | {mfu} | {r['peak_rss_gb']:.2f} | {r['load'][0]:.2f} |")
    return lines


if __name__ == "__main__":
    host_memory.use_huge_pages()  # executes this command again, once, with huge pages for the allocator
    sys.exit(main())

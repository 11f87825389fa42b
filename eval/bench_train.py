"""End-to-end training throughput: env steps/s and replayed steps/s of the real loop.

    python eval/bench_train.py [--task rodent_goto] [--presets debug size1m] [--warmup 128] [--steps 384]
                               [--envs 2] [--prefill 64] [--rounds 1] [-- --key value ...]

For each row it builds the training loop exactly as `dreamer_rodent.train`
does (env workers or in-process envs, batched policy, replay, agent updates at
the preset's train ratio), runs `--warmup` env steps so that compilation and the
prefill are out of the way, then times `--steps` more env steps. Reported:
end-to-end env steps/s and replayed steps/s (batch_size x batch_length per
update) over that window, the policy-only and train-only rates the loop logs,
and the load average.

A row is presets joined by '+' with optional ':key=value' config settings, e.g.
`cpu_small+proprio_only:run.collect_ahead=16` (the rat's CPU command with the
collector thread). `--envs 0` keeps the presets' run.envs. `--rounds N` repeats
the rows in turn, so that a change in the machine's load hits every row alike.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from dreamer_rodent import distributed, host_memory  # noqa: E402
from dreamer_rodent.config import parse_args  # noqa: E402


def row_args(row: str) -> list[str]:
    """'a+b:key=value:...' -> ['--configs', 'a', 'b', '--key', 'value', ...]."""
    presets, *settings = row.split(":")
    argv = ["--configs", *presets.split("+")]
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise ValueError(f"row '{row}': '{setting}' is not key=value")
        argv += [f"--{key}", value]
    return argv


def bench(task: str, preset: str, warmup: int, steps: int, envs: int, prefill: int, extra: list[str]) -> dict:
    from dreamer_rodent.train import Trainer, check_config

    with tempfile.TemporaryDirectory(prefix="bench_train_") as logdir:
        argv = ["--task", task, *row_args(preset), "--logdir", logdir, *(["--run.envs", str(envs)] if envs else []),
                "--run.prefill", str(prefill), "--run.steps", str(warmup), "--run.progress", "false",
                "--run.save_every", "1e9", "--run.video_every", "1e9", "--run.log_every", "1e9", *extra]
        config, _ = parse_args(argv)
        check_config(config)
        mesh = distributed.make_mesh(config)
        start = time.monotonic()
        trainer = Trainer(config, pathlib.Path(logdir), mesh, say=lambda *_: None)
        try:
            built = time.monotonic() - start
            trainer.run(lambda: False)
            warm = time.monotonic() - start - built
            env0, train0 = trainer.counters["env_steps"], trainer.counters["train_steps"]
            trainer.config = config.update({"run.steps": warmup + steps})
            begin = time.monotonic()
            trainer.run(lambda: False)
            seconds = time.monotonic() - begin
            env1, train1 = trainer.counters["env_steps"], trainer.counters["train_steps"]
            logged = [json.loads(x) for x in (pathlib.Path(logdir) / "metrics.jsonl").read_text().splitlines()]
            last = [x for x in logged if "fps/policy" in x][-1]
            per_update = int(config.batch_size) * int(config.batch_length)
            return {
                "task": task, "preset": preset, "params": trainer.agent.param_count(), "envs": int(config.run.envs),
                "batch": f"{config.batch_size}x{config.batch_length}", "train_ratio": float(config.run.train_ratio),
                "build_s": round(built, 1), "warmup_s": round(warm, 1), "window_env_steps": env1 - env0,
                "window_s": round(seconds, 1),
                "env_steps_per_s": round((env1 - env0) / seconds, 2),
                "replayed_steps_per_s": round((train1 - train0) * per_update / seconds, 1),
                "policy_fps": round(last["fps/policy"], 1), "train_fps": round(last["fps/train"], 1),
            }
        finally:
            trainer.close()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="rodent_goto")
    parser.add_argument("--presets", nargs="+", default=["debug", "size1m"])
    parser.add_argument("--warmup", type=int, default=128, help="env steps before timing (prefill + compile)")
    parser.add_argument("--steps", type=int, default=384, help="env steps timed")
    parser.add_argument("--envs", type=int, default=2, help="env workers (0: the presets' run.envs)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the rows in turn this many times")
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--json", default="", help="also write the rows to this file")
    args = parser.parse_args(argv)
    config, _ = parse_args(["--task", args.task, *extra])
    distributed.setup(config)
    import jax

    load_before = os.getloadavg()
    from dreamer_rodent.train import check_config

    for preset in args.presets:
        try:
            check_config(parse_args(["--task", args.task, *row_args(preset), *extra])[0])
        except Exception as error:  # noqa: BLE001 - one line for a bad row, before anything is measured
            print(f"error: row '{preset}': {error}", file=sys.stderr)
            return 2
    rows = [bench(args.task, p, args.warmup, args.steps, args.envs, args.prefill, extra)
            for _ in range(args.rounds) for p in args.presets]
    load_after = os.getloadavg()
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), {os.cpu_count()} CPU cores; "
          f"load average before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} (1/5/15 min)")
    header = ["preset", "params", "envs", "batch", "train_ratio", "env_steps_per_s", "replayed_steps_per_s",
              "policy_fps", "train_fps", "window_env_steps", "window_s", "build_s", "warmup_s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{row[h]:,}" if isinstance(row[h], int) else str(row[h]) for h in header) + " |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "load_before": load_before,
                                                       "load_after": load_after}, indent=1))
    return 0


if __name__ == "__main__":
    host_memory.use_huge_pages()  # executes this command again, once, with huge pages for the allocator
    sys.exit(main())

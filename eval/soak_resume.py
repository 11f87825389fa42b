"""Kill a training run with SIGKILL N times and check that every restart resumes right.

    python eval/soak_resume.py --n 20 --out logdir/soak [-- TRAIN FLAGS]

Each round starts `python -m dreamer_rodent.train` on the same run directory,
waits for its first update and kills it with SIGKILL at a moment of one of three
kinds, in turn:

    random      a uniformly random time in the first --window seconds of training
    checkpoint  while a checkpoint is being written (its ckpt_*.tmp<pid> directory exists)
    replay      while a full replay chunk is being written (checkpoints/replay/*.tmp<pid> exists)

After each kill, from the files alone: the newest complete checkpoint verifies;
no env step was counted twice (in that checkpoint every env stream's replay
chunks tile [0, n) without overlap or gap, and the streams hold exactly the
env-step counter); `python -m dreamer_rodent.eval` loads that checkpoint and
writes its MP4 and JSON. At the next start, from its output: it resumed from
that checkpoint at that env step, with no warning. A last round stops the run
with SIGTERM and checks that it saved where it stopped. One line per round,
a summary, and OUT/soak.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dreamer_rodent import checkpoint as ckpt  # noqa: E402
from dreamer_rodent.cli_help import split_train_flags  # noqa: E402

KINDS = ("random", "checkpoint", "replay")
DEFAULT_FLAGS = ["--task", "ball_goto", "--configs", "debug", "--env.time_limit", "1.0", "--run.envs", "2",
                 "--run.save_every", "2", "--run.steps", "10000000", "--replay.capacity", "1e6",
                 "--run.progress", "false", "--logging.tensorboard", "false"]
RESUMED = re.compile(r"Resumed from (\S+) at env step (\d+) ")


def newest_complete(rundir: pathlib.Path) -> pathlib.Path | None:
    """What a resume must pick: the newest checkpoint that finished writing."""
    complete = ckpt.Checkpointer(rundir).list()
    return complete[-1] if complete else None


def steps_counted_once(checkpoint: ckpt.Checkpoint) -> str | None:
    """None if the replay's chunks of every stream tile [0, n) and add up to the env-step counter."""
    streams = collections.defaultdict(list)
    for entry in checkpoint.replay["chunks"]:
        streams[int(entry["stream"])].append((int(entry["start"]), int(entry["size"])))
    held = 0
    for stream, chunks in sorted(streams.items()):
        position = 0
        for start, size in sorted(chunks):
            if start != position:
                return f"stream {stream}: a chunk starts at step {start}, the one before ended at {position}"
            position = start + size
        held += position
    counted = int(checkpoint.state["counters"]["env_steps"])
    if held != counted:
        return f"the replay holds {held} steps, the env-step counter says {counted}"
    return None


def wait_for(predicate, timeout: float, proc=None, poll: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def writing(rundir: pathlib.Path, kind: str) -> bool:
    folder = rundir / ckpt.CHECKPOINTS
    if kind == "checkpoint":
        return any(folder.glob("ckpt_*.tmp*"))
    return any((folder / ckpt.REPLAY_CHUNKS).glob("*.tmp*"))


def start(command: list[str], log: pathlib.Path):
    handle = open(log, "w")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc, handle


def check_resume(log: pathlib.Path, expected: pathlib.Path | None, step: int | None) -> list[str]:
    text = log.read_text()
    problems = [f"warning at start: {line}" for line in text.splitlines() if line.startswith("warning:")]
    match = RESUMED.search(text)
    if expected is None:
        if match:
            problems.append(f"resumed from {match.group(1)} though no checkpoint was complete")
    elif not match:
        problems.append(f"did not resume (expected {expected.name})")
    elif pathlib.Path(match.group(1)).name != expected.name or int(match.group(2)) != step:
        problems.append(f"resumed from {match.group(1)} at step {match.group(2)}, expected {expected.name} at {step}")
    return problems


def main(argv=None) -> int:
    argv, rest = split_train_flags(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="SIGKILLs")
    parser.add_argument("--out", required=True, help="a new directory: the run, the logs, soak.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=float, default=8.0, help="seconds of training a random kill lands in")
    parser.add_argument("--timeout", type=float, default=300.0, help="guard per wait (start-up, a write to land in)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} is not empty; give a new --out.")
    out.mkdir(parents=True, exist_ok=True)
    rundir = out / "run"
    command = [sys.executable, "-m", "dreamer_rodent.train", *DEFAULT_FLAGS, *rest, "--logdir", str(rundir)]
    rng = random.Random(args.seed)
    rounds, expected, expected_step = [], None, None
    print("$ " + " ".join(command), flush=True)
    for n in range(args.n + 1):
        last = n == args.n
        kind = "sigterm" if last else KINDS[n % len(KINDS)]
        log = out / f"round{n:02d}.log"
        began = time.monotonic()
        proc, handle = start(command, log)
        record = {"round": n, "kind": kind, "problems": []}
        try:
            if not wait_for(lambda: "First update: done" in log.read_text(), args.timeout, proc, poll=0.1):
                record["problems"].append(f"no first update within {args.timeout:.0f} s (exit {proc.poll()})")
            record["problems"] += check_resume(log, expected, expected_step)
            landed = True
            if kind == "random" or kind == "sigterm":
                time.sleep(rng.uniform(0.0, args.window))
            else:  # not always the first save after the start: a random later one
                time.sleep(rng.uniform(0.0, args.window))
                landed = wait_for(lambda: writing(rundir, kind), args.timeout, proc)
            record["landed"] = landed
            proc.send_signal(signal.SIGTERM if last else signal.SIGKILL)
            try:
                code = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:  # a SIGTERM save that never ends: the round's problem, not the soak's
                code = None
                record["problems"].append(f"still running {args.timeout:.0f} s after the signal")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            handle.close()
        record["exit"] = code
        record["seconds"] = round(time.monotonic() - began, 1)
        if not landed:
            record["problems"].append(f"no {kind} write seen within {args.timeout:.0f} s")
        leftovers = sorted(p.name for p in (rundir / ckpt.CHECKPOINTS).rglob("*.tmp*"))
        record["leftovers"] = leftovers  # a SIGKILL mid-write leaves these; the next save prunes them
        expected = newest_complete(rundir)
        if expected is None:
            record["problems"].append("no complete checkpoint after the kill")
            expected_step = None
        else:
            try:
                loaded = ckpt.load(expected)
                expected_step = loaded.step
                record["checkpoint"], record["env_steps"] = expected.name, expected_step
                record["train_steps"] = int(loaded.state["counters"]["train_steps"])
                problem = steps_counted_once(loaded)
                if problem:
                    record["problems"].append(problem)
            except ckpt.CheckpointError as error:
                record["problems"].append(f"the newest complete checkpoint does not load: {error}")
        if last:
            text = log.read_text()
            if code != 0 or "Stopped by SIGTERM at env step" not in text:
                record["problems"].append(f"SIGTERM: exit {code}, no 'Stopped by SIGTERM' line")
            elif f"env step {expected_step};" not in text:
                record["problems"].append(f"SIGTERM did not save where it stopped (newest is step {expected_step})")
        if expected is not None:
            video = out / f"eval{n:02d}.mp4"
            try:
                done = subprocess.run([sys.executable, "-m", "dreamer_rodent.eval", "--checkpoint", str(expected),
                                       "--episodes", "1", "--size", "64x48", "--out", str(video)], cwd=ROOT,
                                      capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                done = subprocess.CompletedProcess([], "timeout", "", f"eval took over {args.timeout:.0f} s")
            if done.returncode != 0 or not video.exists() or not video.with_suffix(".json").exists():
                record["problems"].append(f"eval of {expected.name} failed (exit {done.returncode}): "
                                          f"{done.stderr.strip()[-300:]}")
        rounds.append(record)
        status = "ok" if not record["problems"] else "FAIL: " + "; ".join(record["problems"])
        print(f"round {n:2d} {kind:10s} exit {str(code):>4} {record['seconds']:6.1f} s  newest "
              f"{record.get('checkpoint', '-')} (train step {record.get('train_steps', '-')}), leftovers "
              f"{len(leftovers)}: {status}", flush=True)
    failed = [r for r in rounds if r["problems"]]
    summary = {"command": command, "kills": args.n, "rounds": rounds, "failed": len(failed),
               "landed": {k: sum(1 for r in rounds if r["kind"] == k and r.get("landed")) for k in KINDS}}
    (out / "soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n{args.n} SIGKILLs ({', '.join(f'{v} {k}' for k, v in summary['landed'].items())} landed) and a "
          f"final SIGTERM: {len(rounds) - len(failed)} of {len(rounds)} rounds resumed and checked out.", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

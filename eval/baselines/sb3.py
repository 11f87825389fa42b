"""A Stable-Baselines3 baseline (SAC or PPO) on any task, measured as eval/learn.py measures ours.

    pip install -e ".[baselines]"
    python eval/baselines/sb3.py --algo sac --task rodent_goto --steps 1000000 --minutes 60 --seed 0 \
        --out eval/results/rodent_goto_sac [-- --configs cpu_small proprio_only]
    python eval/learn.py --task rodent_goto --seeds 0 --out eval/results/rodent_goto_sac --plot-only

The env is `dreamer_rodent.gym`'s (the training adapter: the same action repeat,
action scaling, rewards and `log/` metrics); flags after `--` are the same config
flags train takes (presets and dotted keys), so a comparison uses one config for
both agents. Every finished training episode goes to OUT/seed<S>/episodes.jsonl
in eval/learn.py's format (return, success, level, reach rate, time to the first
reach, curriculum level), so `learn.py --plot-only` draws and summarises it like
our runs; SB3's scalars and `episode/*` go to OUT/seed<S>/metrics.jsonl and TensorBoard
events there, through our logger (the layout of a training run). At
the end the policy is evaluated deterministically for `--eval-episodes`
episodes with the curriculum pinned at `--eval-level` into OUT/seed<S>/final_eval.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from dreamer_rodent.cli_help import split_train_flags  # noqa: E402

ALGOS = ("sac", "ppo")


def _learn():
    spec = importlib.util.spec_from_file_location("learn", ROOT / "eval" / "learn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_env(task: str, train_flags: list[str], seed: int, level: int | None = None):
    """`dreamer_rodent/<task>-v0` with train's config flags (and the curriculum pinned at `level`)."""
    import gymnasium

    import dreamer_rodent.gym  # noqa: F401  (registers the tasks)
    from dreamer_rodent.config import split_flags

    names, flags, _ = split_flags(train_flags)
    dreamer_rodent.gym.register_all(str(flags.get("task_module", "") or ""))  # a plugin task's id too
    flags = {**flags, "seed": seed}
    if level is not None:
        flags["task_kwargs.level"] = int(level)
    return gymnasium.make(f"dreamer_rodent/{task}-v0", configs=names, config=flags)


class EpisodeRecorder:
    """Builds driver-style episode records from the per-step infos of a vector env, for learn.py's `_scores`."""

    def __init__(self, num: int):
        self.open = [{"score": 0.0, "length": 0, "success": 0.0} for _ in range(num)]

    def step(self, rewards, dones, infos) -> list[dict]:
        finished = []
        for i, (reward, done, info) in enumerate(zip(rewards, dones, infos)):
            episode = self.open[i]
            episode["score"] += float(reward)
            episode["length"] += 1
            episode["success"] = max(episode["success"], float(info.get("log/success", 0.0)))
            for key, value in info.items():
                if key.startswith("log/") and key != "log/success":
                    episode[key[len("log/"):]] = float(value)
            if done:
                finished.append(dict(episode, env=i))
                self.open[i] = {"score": 0.0, "length": 0, "success": 0.0}
        return finished


def sb3_logger(rundir: pathlib.Path):
    """SB3's logger writing through ours: metrics.jsonl and TensorBoard events in the run directory, as a
    training run of our agent has them (so one `tensorboard --logdir` shows both)."""
    from stable_baselines3.common.logger import KVWriter, Logger as SB3Logger

    from dreamer_rodent.logger import Logger

    class Ours(KVWriter):
        def __init__(self):
            self.logger = Logger(rundir)

        def write(self, key_values, key_excluded, step=0):
            scalars = {k: float(v) for k, v in key_values.items()
                       if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
            self.logger.scalars(int(step), scalars)

        def close(self):
            self.logger.close()

    return SB3Logger(str(rundir), [Ours()])


def evaluate(model, task: str, train_flags: list[str], seed: int, episodes: int, level: int) -> dict:
    """Deterministic episodes at a pinned level: the same fields as the training episodes, and their means."""
    learn = _learn()
    env = make_env(task, train_flags, seed + 10_000, level)
    has_success = "log/success" in env.unwrapped._env.obs_space
    recorder, records = EpisodeRecorder(1), []
    obs, _ = env.reset(seed=seed + 10_000)
    while len(records) < episodes:
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, info = env.step(action)
        for episode in recorder.step([reward], [terminated or truncated], [info]):
            records.append(learn._scores(episode, has_success))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()

    def mean(key):  # over the episodes that have the field (first_reach_s: those that reached one)
        return learn._mean([r.get(key) for r in records])

    return {"episodes": records, "level": level, "deterministic": True, "return": mean("return"),
            "success_rate": mean("success"), "targets_per_min": mean("targets_per_min"),
            "first_reach_s": mean("first_reach_s")}


def main(argv=None) -> int:
    """One `error:` line, exit 2, for a wrong task, config flag or missing extra."""
    from dreamer_rodent.config import ConfigError
    from tasks.registry import TaskConfigError, UnknownTaskError

    try:
        return _main(argv)
    except (ConfigError, UnknownTaskError, TaskConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    argv, rest = split_train_flags(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", choices=ALGOS, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--steps", type=int, default=100_000, help="env steps (agent steps, as ours count them)")
    parser.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="results directory; the run goes to OUT/seed<S>/")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--eval-level", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import stable_baselines3 as sb3
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError:
        print("error: this baseline needs stable-baselines3 and torch: pip install -e '.[baselines]'.",
              file=sys.stderr)
        return 2
    learn = _learn()
    rundir = pathlib.Path(args.out) / f"seed{args.seed}"
    rundir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    import gymnasium

    try:
        env = make_env(args.task, rest, args.seed)
    except gymnasium.error.Error as error:  # an id gymnasium does not know: a task that is not registered
        from tasks import registry

        registry.get(args.task)  # the registry's own message, with the closest name
        raise registry.UnknownTaskError(str(error)) from None
    has_success = "log/success" in env.unwrapped._env.obs_space
    algo = {"sac": sb3.SAC, "ppo": sb3.PPO}[args.algo]
    model = algo("MultiInputPolicy", env, seed=args.seed, verbose=0)
    model.set_logger(sb3_logger(rundir))

    class Record(BaseCallback):
        """Appends each finished episode to episodes.jsonl; stops when the --minutes budget is spent."""

        def __init__(self, out):
            super().__init__()
            self.out, self.steps = out, 0
            self.recorder = EpisodeRecorder(1)

        def _on_step(self) -> bool:
            self.steps += len(self.locals["dones"])
            for episode in self.recorder.step(self.locals["rewards"], self.locals["dones"], self.locals["infos"]):
                record = {"env_steps": self.steps, "wall_s": round(time.monotonic() - start, 3),
                          **learn._scores(episode, has_success)}
                self.out.write(json.dumps(record) + "\n")
                for key in ("return", "success", "targets_per_min", "level"):
                    if record.get(key) is not None:
                        self.logger.record(f"episode/{key}", record[key])
            return not learn.budget_spent(start, time.monotonic(), args.minutes)

    with open(rundir / learn.EPISODES, "w", buffering=1) as out:
        callback = Record(out)
        model.learn(total_timesteps=args.steps, callback=callback, tb_log_name=args.algo)
    steps = callback.steps
    model.save(rundir / f"{args.algo}_model")
    (rundir / learn.DONE).write_text(json.dumps({"wall_s": time.monotonic() - start, "env_steps": steps,
                                                 "algo": args.algo, "argv": sys.argv}) + "\n")
    pinned = args.eval_level if "log/curriculum_level" in env.unwrapped._env.obs_space else None  # no curriculum: no pin
    result = evaluate(model, args.task, rest, args.seed, args.eval_episodes, pinned)
    (rundir / "final_eval.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.algo} on {args.task}, seed {args.seed}: {steps} env steps in {time.monotonic() - start:.0f} s; "
          f"final policy at level {pinned}, {args.eval_episodes} deterministic episodes: return "
          f"{result['return']}, success {result['success_rate']}, targets/min {result['targets_per_min']}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

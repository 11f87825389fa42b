"""Evaluation during training: the deterministic policy on fixed episodes, and the best checkpoint kept.

The training curve mixes exploration noise, easy-level episodes and a
curriculum that moves; a researcher wants to know how well the policy itself
does, at a fixed level, as training goes (the role of Stable-Baselines3's
EvalCallback). Every `run.eval_every` seconds the trainer calls
`PeriodicEval.evaluate`: `run.eval_episodes` episodes per level in
`run.eval_levels` (tasks without a curriculum: the task as it is), on a fresh
in-process env built with the same seed each time, so that every evaluation sees
the same targets and spawns and two evaluations differ only by the policy.

The score is the mean targets per minute over the levels where the task reports
a reach rate, else the mean return; the mean return breaks ties (a reach rate
saturates at one target per episode). The checkpoint with the best score so far is
kept as `checkpoints/best/` (agent, state, config; no replay), which
`python -m dreamer_rodent.eval --checkpoint RUN/checkpoints/best` evaluates
like any other. A fixed set of a few episodes picks the best checkpoint with
some luck: evaluate it again on other episodes (eval --seed) before reporting it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dreamer_rodent.config import Config, ConfigError
from dreamer_rodent.rollout import policy_obs, run_episodes
from dreamer_rodent.scores import summarize


def eval_env_index(config: Config, level: int | None) -> int:
    """The env index (seed = seed * env.seed_stride + index) of the evaluation env of `level`: the last ones of this
    seed's block, which training envs (0 .. run.envs - 1) reach only with about env.seed_stride envs."""
    return int(config.env.seed_stride) - 1 - (level or 0)


def curriculum_levels(config: Config) -> list[float]:
    """The task's curriculum levels (target distances), or [] for a task without one."""
    kwargs = config.get("task_kwargs") or {}
    return list(kwargs.get("curriculum_levels") or [])


def check_eval_config(config: Config) -> None:
    """run.eval_* values that would fail later, as one ConfigError naming the key."""
    run = config.run
    if float(run.eval_every) < 0:
        raise ConfigError(f"config key 'run.eval_every' must be >= 0 seconds (0: no evaluation), got {run.eval_every}.")
    if int(run.eval_episodes) < 1:
        raise ConfigError(f"config key 'run.eval_episodes' must be >= 1, got {run.eval_episodes}.")
    levels = curriculum_levels(config)
    asked = [int(x) for x in run.eval_levels]
    if not asked:
        raise ConfigError("config key 'run.eval_levels' is empty: give at least one curriculum level, e.g. "
                          "--run.eval_levels 0 1.")
    if levels:
        bad = [x for x in asked if not 0 <= x < len(levels)]
        if bad:
            raise ConfigError(f"run.eval_levels {bad} do not exist: task '{config.task}' has {len(levels)} curriculum "
                              f"levels (0-{len(levels) - 1}, target distances {levels} m).")


@dataclasses.dataclass
class EvalResult:
    score: float
    mean_return: float  # breaks ties of the score
    metrics: dict  # eval/... scalars for the logger
    line: str  # one console line
    episodes: dict  # level (None: no curriculum) -> the rollout.Episode list


class PeriodicEval:
    """Deterministic evaluation episodes at fixed levels, and the best score so far."""

    def __init__(self, config: Config, make_env):
        self.config = config
        self.make_env = make_env  # make_env(config, index) -> Env (dreamer_rodent.env.make_env)
        self.episodes = int(config.run.eval_episodes)
        self.asked = [int(x) for x in config.run.eval_levels]  # what the settings say (saved, compared on resume)
        self.levels: list[int | None] = list(self.asked) if curriculum_levels(config) else [None]
        self.best: float | None = None
        self.best_return: float | None = None
        self.best_step: int | None = None

    def state_dict(self) -> dict:
        return {"best": self.best, "best_return": self.best_return, "best_step": self.best_step,
                "levels": list(self.asked), "episodes": self.episodes}

    def load_state_dict(self, state: dict | None) -> str | None:
        """Restores the best so far (the trainer passes checkpoints/best's own record, so the score always belongs
        to the agent kept there); a note and a fresh start when the evaluation settings changed since."""
        state = state or {}
        if state.get("best") is None:
            return None
        settings = (list(state.get("levels") or []), state.get("episodes"))
        if settings != (list(self.asked), self.episodes):
            return (f"the evaluations so far ran {settings[1]} episodes at levels {settings[0]}, these run "
                    f"{self.episodes} at {list(self.asked)}: their scores do not compare, so the best is chosen "
                    f"afresh (checkpoints/best is replaced by the next evaluation).")
        self.best = state.get("best")
        self.best_return = state.get("best_return")
        self.best_step = state.get("best_step")
        return None

    def _env_config(self, level: int | None) -> Config:
        updates = {"run.envs": 1}
        if level is not None:
            updates["task_kwargs.level"] = level  # pinned: no curriculum moves, no easy episodes
        return self.config.update(updates)

    def evaluate(self, agent, stop=lambda: False) -> EvalResult | None:
        """Rolls out the deterministic policy; the score and the metrics to log (the best is not updated here).
        None when `stop()` turned true between two episodes (a Ctrl-C does not wait for the rest)."""
        metrics: dict[str, float] = {}
        scores, returns, parts, rolled = [], [], [], {}
        rated = True
        for level in list(self.levels):
            env = self.make_env(self._env_config(level), eval_env_index(self.config, level))
            if level is not None and "log/curriculum_level" not in env.obs_space:
                self.levels = [None]  # a task without a curriculum (the suite tasks): once, as it is
                level = None
            episodes = []
            try:
                for _ in range(self.episodes):  # one at a time, the same episodes as all at once
                    if stop():
                        return None
                    episodes += run_episodes(env, _acting(agent), lambda: agent.init_policy(1), 1)
            finally:
                env.close()
            rolled[level] = episodes
            summary = summarize(episodes)  # the eval command's numbers, so both read alike
            values = {"return": summary["return"]["mean"], "length": summary["length"]["mean"]}
            if "targets_per_min" in summary:
                values["targets_per_min"] = summary["targets_per_min"]["mean"]
            if "success_rate" in summary:
                values["success"] = summary["success_rate"]
            if "upright" in summary["metrics"]:
                values["upright"] = summary["metrics"]["upright"]["mean"]
            prefix = "eval/" if len(self.levels) == 1 else f"eval/level{level}/"
            metrics.update({prefix + k: v for k, v in values.items()})
            rate = values.get("targets_per_min")
            rated = rated and rate is not None
            scores.append(values["return"] if rate is None else rate)
            returns.append(values["return"])
            where = f"level {level}: " if level is not None else ""
            parts.append(where + ("" if rate is None else f"{rate:.1f} targets/min, ") + f"return {values['return']:.1f}")
            if level is None:
                break
        score = float(np.mean(scores))
        metrics["eval/score"] = score
        line = (f"Evaluation, deterministic policy, {self.episodes} episode{'s' if self.episodes > 1 else ''}"
                f"{' per level' if len(self.levels) > 1 else ''}: {'; '.join(parts)} "
                f"(score {score:.2f} {'targets/min' if rated else 'return'}")
        return EvalResult(score, float(np.mean(returns)), metrics, line, rolled)

    def is_best(self, result: EvalResult) -> bool:
        """Better than every evaluation so far: a higher score, or the same score with a higher mean return."""
        if not math.isfinite(result.score):
            return False
        if self.best is None:
            return True
        if result.score != self.best:
            return result.score > self.best
        return self.best_return is None or result.mean_return > self.best_return

    def mark_best(self, result: EvalResult, step: int) -> None:
        self.best, self.best_return, self.best_step = float(result.score), float(result.mean_return), int(step)


def _acting(agent):
    def act(carry, obs):
        carry, output = agent.policy(carry, policy_obs(obs), mode="eval")
        return carry, np.asarray(output["action"], np.float32)[0]

    return act

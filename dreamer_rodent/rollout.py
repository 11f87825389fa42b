"""Roll a policy out for whole episodes and keep what an evaluation reports about each.

`run_episodes` drives an env adapter with any `act(carry, obs)` (the eval's
agent, a scripted policy in tests) and calls back on every observation, so
the video, the overlay and the NWB recording all see the same steps.
`Episode` accumulates the numbers of one episode from its `log/` metrics.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from dreamer_rodent.scores import spread


class EvalError(Exception):
    """Evaluation cannot go on; the message says what is wrong and how to fix it."""


@dataclasses.dataclass
class Episode:
    """One evaluated episode: its scores and, for --dream, what the agent saw and did."""

    index: int
    ret: float = 0.0
    length: int = 0
    success: bool | None = None
    terminal: bool = False
    final_distance: float | None = None
    min_distance: float | None = None
    level: int | None = None
    targets: int | None = None
    targets_per_min: float | None = None
    first_reach_s: float | None = None
    frames: int = 0
    metrics: dict = dataclasses.field(default_factory=dict)  # every `log/` key of the task: its finite step values
    obs: list = dataclasses.field(default_factory=list)
    actions: list = dataclasses.field(default_factory=list)

    def scores(self) -> dict:
        """The episode's numbers; a field the task has no metric for (a suite task's distance) is left out."""
        scores = {"episode": self.index + 1, "return": self.ret, "length": self.length, "terminal": self.terminal}
        for key, value in (("success", self.success), ("final_distance", self.final_distance),
                           ("min_distance", self.min_distance), ("level", self.level),
                           ("targets_reached", self.targets), ("targets_per_min", self.targets_per_min)):
            if value is not None:
                scores[key] = value
        if self.targets_per_min is not None:
            scores["first_reach_s"] = self.first_reach_s  # None (JSON null): no target reached
        scores["metrics"] = {name: spread(values) for name, values in sorted(self.metrics.items()) if values}
        return scores


def policy_obs(obs: dict) -> dict:
    """What the agent sees: every key but the `log/` metrics, batched to [1, ...]."""
    return {k: np.asarray(v)[None] for k, v in obs.items() if not k.startswith("log/")}


def scalar(obs: dict, key: str):
    value = obs.get(key)
    return None if value is None else float(np.asarray(value).reshape(-1)[0])


def run_episodes(
    env,
    act: Callable[[Any, dict], tuple[Any, np.ndarray]],
    init_carry: Callable[[], Any],
    episodes: int,
    on_step: Callable[[Episode, dict, int], None] | None = None,
    keep: tuple[int, int] = (0, 0),
    on_episode_end: Callable[[Episode], None] | None = None,
    act_on_last: bool = False,
) -> list[Episode]:
    """Rolls out whole episodes; `on_step(episode, obs, step)` sees every observation.

    Step 0 is the episode's first observation; the return and length count the
    steps after it, so a video has length + 1 frames per episode. `keep =
    (episodes, steps)` records the agent's observations and actions of the first
    steps of the first episodes (for --dream), and no more, to bound memory.
    `act_on_last` lets the policy see the last observation too (its action is
    not executed), so a recording has the agent's state at every frame.
    """
    act_space = env.act_space
    zero_action = np.zeros(act_space["action"].shape, act_space["action"].dtype)
    results = []
    for index in range(episodes):
        episode = Episode(index)
        obs = env.step({"action": zero_action, "reset": True})
        if not bool(obs["is_first"]):
            raise EvalError("the env did not start a new episode on reset (is_first is false).")
        carry = init_carry()
        step = 0
        while True:
            accumulate(episode, obs, step)
            if on_step:
                on_step(episode, obs, step)
            if bool(obs["is_last"]):
                if act_on_last:
                    act(carry, obs)
                break
            carry, action = act(carry, obs)
            if index < keep[0] and step < keep[1]:
                episode.obs.append({k: np.asarray(v) for k, v in obs.items() if not k.startswith("log/")})
                episode.actions.append(action)
            obs = env.step({"action": action, "reset": False})
            step += 1
        if index < keep[0] and step < keep[1]:  # the last observation has no action after it
            episode.obs.append({k: np.asarray(v) for k, v in obs.items() if not k.startswith("log/")})
            episode.actions.append(np.zeros_like(zero_action))
        results.append(episode)
        if on_episode_end:
            on_episode_end(episode)
    return results


def accumulate(episode: Episode, obs: dict, step: int) -> None:
    if step > 0:
        episode.ret += float(obs["reward"])
        episode.length = step
    episode.terminal = bool(obs.get("is_terminal", False))
    for key, value in obs.items():
        if key.startswith("log/"):
            value = float(np.asarray(value).reshape(-1)[0])
            values = episode.metrics.setdefault(key[len("log/"):], [])
            if math.isfinite(value):
                values.append(value)
    success = scalar(obs, "log/success")
    if success is not None:
        episode.success = bool(episode.success) or success > 0.5
    distance = scalar(obs, "log/distance")
    if distance is not None:
        episode.final_distance = distance
        episode.min_distance = distance if episode.min_distance is None else min(episode.min_distance, distance)
    targets = scalar(obs, "log/targets_reached")
    if targets is not None:
        episode.targets = int(targets)
    rate = scalar(obs, "log/targets_per_min")
    if rate is not None:
        episode.targets_per_min = rate
    first = scalar(obs, "log/first_reach_s")
    if first is not None:  # NaN until the first reach; strict JSON has no NaN, so None stands for it
        episode.first_reach_s = first if math.isfinite(first) else None
    level = scalar(obs, "log/curriculum_episode_level")
    level = scalar(obs, "log/curriculum_level") if level is None else level
    level = scalar(obs, "log/level") if level is None else level
    if level is not None:
        episode.level = int(level)

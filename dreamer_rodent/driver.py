"""The driver: steps a batch of envs with a batched policy and keeps episode records.

Each call of `step` takes the observations of all envs, asks the policy (or the
random prefill policy) for actions and steps the envs once. The transition it
returns pairs observation t with the action chosen after seeing it, which is
the layout the agent trains on (`action[t]` follows `obs[t]`).
"""

from __future__ import annotations

import collections
from typing import Callable, Mapping

import numpy as np

Policy = Callable[[dict], Mapping[str, np.ndarray]]


def agent_obs(obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops `log/` metrics: they are for people, never for the agent."""
    return {k: v for k, v in obs.items() if not k.startswith("log/")}


class Episodes:
    """Per-env running score and length; returns a record for each finished episode.

    A record has `score`, `length`, `success` (1 if `log/success` was set at any
    step of the episode, i.e. the target was reached at least once; 0 if the task
    has no such metric) and the last value of every other `log/` key (e.g.
    `log/curriculum_level`, `log/distance`), so a task that wants an
    episode-level number logs its running value at every step (the go-to tasks'
    `log/targets_per_min` and `log/first_reach_s`, NaN until a target is
    reached). Frames of env `video_env` are kept for rollout videos.
    """

    def __init__(self, num: int, video_env: int = 0, video_key: str = "image", max_frames: int = 500):
        self.num = num
        self.score = np.zeros(num, np.float64)
        self.length = np.zeros(num, np.int64)
        self.success = np.zeros(num, np.float64)
        self.video_env = video_env
        self.video_key = video_key
        self.max_frames = max_frames
        self.frames: list[np.ndarray] = []
        self.last_video: np.ndarray | None = None  # frames of the last finished episode of video_env

    def add(self, obs: Mapping[str, np.ndarray]) -> list[dict]:
        finished = []
        first = np.asarray(obs["is_first"], bool)
        self.score[first] = 0.0
        self.length[first] = 0
        self.score += np.where(first, 0.0, np.asarray(obs["reward"], np.float64))
        self.length += np.where(first, 0, 1)
        if "log/success" in obs:
            self.success = np.where(first, 0.0, self.success)
            self.success = np.maximum(self.success, np.asarray(obs["log/success"], np.float64))
        if self.video_key in obs:
            if first[self.video_env]:
                self.frames = []
            if len(self.frames) < self.max_frames:
                self.frames.append(np.asarray(obs[self.video_key][self.video_env]))
        for i in np.flatnonzero(np.asarray(obs["is_last"], bool)):
            record = {"env": int(i), "score": float(self.score[i]), "length": int(self.length[i])}
            for key, value in obs.items():
                if key.startswith("log/") and np.size(value[i]) == 1:
                    record[key[4:]] = float(np.asarray(value[i]).reshape(()))
            record["success"] = float(self.success[i] > 0)
            finished.append(record)
            if i == self.video_env and self.frames:
                self.last_video = np.stack(self.frames)
        return finished


class Driver:
    """Steps `env` (a BatchEnv) with a policy; `obs` holds the current observations."""

    def __init__(self, env, seed: int = 0):
        self.env = env
        self.num = len(env)
        self.act_space = env.act_space
        self.rng = np.random.default_rng(seed)
        self.episodes = Episodes(self.num)
        self.obs: dict[str, np.ndarray] | None = None

    def reset(self) -> dict[str, np.ndarray]:
        """Starts a fresh episode in every env (after start-up or a resume)."""
        acts = {k: np.zeros((self.num,) + s.shape, s.dtype) for k, s in self.act_space.items()}
        acts["reset"] = np.ones(self.num, bool)
        self.obs = self.env.step(acts)
        return self.obs

    def random_actions(self, obs=None) -> dict[str, np.ndarray]:
        space = self.act_space["action"]
        return {"action": np.stack([space.sample(self.rng) for _ in range(self.num)])}

    def step(self, policy: Policy) -> tuple[dict[str, np.ndarray], list[dict]]:
        """One env step for all envs. Returns the transition (obs t + action t) and finished episodes."""
        if self.obs is None:
            self.reset()
        obs = self.obs
        action = np.asarray(policy(obs)["action"])
        space = self.act_space["action"]
        if action.shape != (self.num,) + space.shape:
            raise ValueError(f"the policy returned actions of shape {action.shape}, expected {(self.num,) + space.shape}.")
        action = action.astype(space.dtype, copy=False)
        finished = self.episodes.add(obs)
        transition = {**obs, "action": action}
        self.obs = self.env.step({"action": action, "reset": np.asarray(obs["is_last"], bool).copy()})
        return transition, finished


class Recent:
    """Means over the last `size` values, for the progress bar."""

    def __init__(self, size: int = 20):
        self.values: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=size))

    def add(self, key: str, value: float) -> None:
        self.values[key].append(float(value))

    def mean(self, key: str) -> float | None:
        values = self.values.get(key)
        return float(np.mean(values)) if values else None

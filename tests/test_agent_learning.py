"""The agent learns: on a 1-D reach task written here, its return rises well above a random policy's.

The task: a point at x in [-1, 1] moves by 0.25 * action per step towards a
random target g; the observation is (x, g - x); the reward is -|g - x| after
the move; episodes last 16 steps (time limit: is_last, never terminal). A
random policy drifts; reaching the target takes a few steps of the right sign.
"""

import time

import numpy as np

from dreamer_rodent.agent import Agent
from dreamer_rodent.config import build_config
from dreamer_rodent.spaces import Space

LENGTH, SPEED = 16, 0.25


class Reach:
    """Vectorised 1-D reach in numpy; returns obs dicts as the env adapter does."""

    def __init__(self, n, seed):
        self.n, self.rng = n, np.random.default_rng(seed)
        self.t = np.zeros(n, int)

    def reset(self):
        self.x = self.rng.uniform(-1, 1, self.n)
        self.g = self.rng.uniform(-0.8, 0.8, self.n)
        self.t[:] = 0
        return self._obs(np.zeros(self.n), first=True)

    def step(self, action):
        self.x = np.clip(self.x + SPEED * np.clip(action[:, 0], -1, 1), -1, 1)
        self.t += 1
        return self._obs(-np.abs(self.g - self.x), first=False)

    def _obs(self, reward, first):
        return {
            "proprio": np.stack([self.x, self.g - self.x], -1).astype(np.float32),
            "reward": reward.astype(np.float32),
            "is_first": np.full(self.n, first), "is_last": self.t >= LENGTH, "is_terminal": np.zeros(self.n, bool),
        }


OBS_SPACE = {"proprio": Space((2,), np.float32), "reward": Space((), np.float32), "is_first": Space((), bool),
             "is_last": Space((), bool), "is_terminal": Space((), bool)}
ACT_SPACE = {"action": Space((1,), np.float32, -1, 1)}


def episode_return(policy, seed, n=64):
    env = Reach(n, seed)
    obs, total = env.reset(), np.zeros(n)
    state = None
    for _ in range(LENGTH):
        state, action = policy(state, obs)
        obs = env.step(action)
        total += obs["reward"]
    return float(total.mean())


def test_return_rises_well_above_random():
    config = build_config(["debug"], {
        "seed": 1, "agent.opt.lr": 1e-3, "agent.opt.warmup": 0, "agent.ac_opt.lr": 1e-3, "agent.ac_opt.warmup": 0,
        "agent.imag_length": 8, "agent.horizon": 20,
        "agent.units": 32, "agent.rssm.deter": 64, "agent.rssm.hidden": 32, "agent.rssm.stoch": 8,
    })
    agent = Agent(OBS_SPACE, ACT_SPACE, config)
    envs, batch, length = 8, 16, 16
    env = Reach(envs, seed=0)
    obs = env.reset()
    carry = agent.init_policy(envs)
    rng = np.random.default_rng(0)
    steps = []  # per time step: dict of [envs, ...] arrays incl. the action chosen after seeing obs
    tcarry = agent.init_train(batch)
    start = time.time()
    updates = 0
    for step in range(900):
        if step < 48:
            action = rng.uniform(-1, 1, (envs, 1)).astype(np.float32)
            carry, _ = agent.policy(carry, obs)
        else:
            carry, act = agent.policy(carry, obs)
            action = act["action"]
        steps.append(dict(obs, action=action))
        obs = env.reset() if obs["is_last"][0] else env.step(action)
        if step >= 48 and step % 2 == 0:
            starts = rng.integers(0, len(steps) - length + 1, batch)
            rows = rng.integers(0, envs, batch)
            data = {k: np.stack([np.stack([steps[s + i][k][r] for i in range(length)]) for s, r in zip(starts, rows)])
                    for k in steps[0]}
            tcarry, metrics = agent.train(tcarry, data)
            updates += 1
    train_time = time.time() - start

    def trained(state, obs):
        state = agent.init_policy(len(obs["reward"])) if state is None else state
        state, act = agent.policy(state, obs, mode="eval")
        return state, act["action"]

    def random(state, obs):
        return state, np.random.default_rng(int(1e3 * obs["proprio"][0, 0]) % 1000).uniform(-1, 1, (len(obs["reward"]), 1))

    def oracle(state, obs):
        return state, np.clip(obs["proprio"][:, 1:] / SPEED, -1, 1)

    results = {name: episode_return(p, seed=123) for name, p in [("trained", trained), ("random", random),
                                                                  ("oracle", oracle)]}
    print(f"returns {results} after {updates} updates in {train_time:.0f}s")
    gap = results["oracle"] - results["random"]
    assert results["trained"] > results["random"] + 0.6 * gap, (results, updates, metrics)

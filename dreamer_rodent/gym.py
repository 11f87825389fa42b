"""Every registered task as a gymnasium environment (optional extra `[gym]`).

    import gymnasium, dreamer_rodent.gym
    env = gymnasium.make("dreamer_rodent/rodent_goto-v0", render_mode="rgb_array", distance_scale=0.1)

Importing this module registers each task of the registry as
`dreamer_rodent/<task>-v0` (`register_all("my_lab.tasks")` adds a plugin's). The env is a thin layer over our own adapter
(`dreamer_rodent.env.make_env`), so action repeat, action scaling, observation
keys and `log/` metrics are exactly what training sees:

- observations: a Dict of the sensory keys of `env.keys` (`image` uint8, `vestibular`,
  `proprio` and task keys such as `target`, float32); actions: a Box in [-1, 1];
- `terminated`: the task ended the episode (a fall, a finished maze); `truncated`:
  the time limit (`env.time_limit`); `info`: the `log/` metrics of that step (one
  without a value yet, such as the time to the first reach, is left out);
- `reset(seed=S)` reseeds the task (spawn poses, targets, mazes) so the same seed
  gives the same episode; `render()` with `render_mode="rgb_array"` is the eval's
  third-person camera (`render_size=(W, H)`, `camera=`).

Keyword arguments to `gymnasium.make` are the task's settings (`task_kwargs.NAME`
of configs.yaml, checked as `--task_kwargs.NAME` is); `configs=[...]` stacks
presets and `config={"env.keys": ["proprio"], ...}` sets any other key, as on the
command line. The task's own preset (`--task NAME`'s) applies first, as in training.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

try:
    import gymnasium
    from gymnasium import spaces as gym_spaces
except ImportError as error:  # pragma: no cover - the message is the test
    raise ImportError("dreamer_rodent.gym needs gymnasium: pip install -e '.[gym]' (or pip install gymnasium).") \
        from error

from dreamer_rodent.config import build_task_config
from dreamer_rodent.env import LOG_PREFIX, make_env

NAMESPACE = "dreamer_rodent"
_BOOKKEEPING = ("reward", "is_first", "is_last", "is_terminal")


def env_id(task: str) -> str:
    return f"{NAMESPACE}/{task}-v0"


def _box(space) -> gym_spaces.Box:
    low = np.broadcast_to(np.asarray(space.low, space.dtype), space.shape)
    high = np.broadcast_to(np.asarray(space.high, space.dtype), space.shape)
    return gym_spaces.Box(low=low, high=high, shape=space.shape, dtype=space.dtype)


class RodentEnv(gymnasium.Env):
    """One task of the registry through our adapter; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, task: str, render_mode: str | None = None, configs: Sequence[str] = (),
                 config: Mapping[str, Any] | None = None, render_size: tuple[int, int] = (320, 240),
                 camera: str | None = None, **task_kwargs):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}.")
        flags = {"task": task, **dict(config or {}), **{f"task_kwargs.{k}": v for k, v in task_kwargs.items()}}
        self.config = build_task_config(configs, flags)
        self.render_mode = render_mode
        self._size = (int(render_size[0]), int(render_size[1]))
        self._camera = camera
        self._env = make_env(self.config)
        self._keys = [k for k in self._env.obs_space if k not in _BOOKKEEPING and not k.startswith(LOG_PREFIX)]
        self.observation_space = gym_spaces.Dict({k: _box(self._env.obs_space[k]) for k in self._keys})
        self.action_space = _box(self._env.act_space["action"])
        self.metadata = dict(self.metadata, render_fps=round(1.0 / self._env.dt))
        self._started = False

    def _split(self, obs: Mapping[str, np.ndarray]):
        observation = {k: obs[k] for k in self._keys}
        # A metric with no value yet (NaN: time to the first reach before any reach) is left out.
        info = {k: float(v) for k, v in obs.items() if k.startswith(LOG_PREFIX) and np.isfinite(v)}
        return observation, info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.reseed(int(seed))
        obs = self._env.step({"reset": True})
        self._started = True
        return self._split(obs)

    def step(self, action):
        if not self._started:
            raise RuntimeError("call reset() before step().")
        obs = self._env.step({"action": np.asarray(action, np.float32), "reset": False})
        observation, info = self._split(obs)
        terminated = bool(obs["is_terminal"])
        truncated = bool(obs["is_last"]) and not terminated
        if terminated or truncated:
            self._started = False  # gymnasium's contract: reset() next
        return observation, float(obs["reward"]), terminated, truncated, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        width, height = self._size
        return self._env.render(self._camera, width, height)

    def close(self):
        self._env.close()


def register_all(task_module: str = "") -> list[str]:
    """Registers every task of the registry, after loading `task_module` (a plugin outside tasks/, as
    `--task_module`); call it again after loading a plugin some other way. Returns the ids."""
    from tasks import registry

    registry.load_module(task_module)
    ids = []
    for name in registry.entries():
        ids.append(env_id(name))
        if ids[-1] not in gymnasium.registry:
            gymnasium.register(id=ids[-1], entry_point=f"{__name__}:RodentEnv", kwargs={"task": name})
    return ids


register_all()

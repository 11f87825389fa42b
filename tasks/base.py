"""The contract between task factories and the env adapter, plus shared helpers.

Adding a task is one file in `tasks/`:

    from dm_control import composer
    from tasks import base
    from tasks.registry import register

    class MyTask(composer.Task):
        ...                                  # a dm_control composer task

    @register("rodent_mytask", "One line saying what the agent must do.", walker="rat")
    def rodent_mytask(config, seed):
        walker = base.make_walker("rat", config)      # ego camera, vestibular sensors
        arena = ...                                    # any composer arena
        task = MyTask(walker, arena, ...)
        return base.build(task, walker, config, seed,
                          task_obs={"target": task.target_observable},
                          log_metrics=task.log_metrics)

Every module in `tasks/` is imported on first registry lookup, so nothing else
needs editing. The factory signature is `factory(config: Config, seed: int) ->
TaskBuild`; `base.build` makes the `composer.Environment` (time limit
`config.env.time_limit`, random state `seed`), switches observables on and off
per `config.env.keys`, and records which observable feeds which of our keys.

What a task must keep:
- The episode ends early only through `should_terminate_episode`; an ending the
  agent should treat as terminal returns discount 0 from `get_discount`. The time
  limit ends with discount 1 (the adapter reports it as `is_last`, not terminal).
- Task observables that the agent sees are passed by object in `task_obs`
  (our key -> observable); each must be a flat float vector.
- Observables are evaluated once when the environment is built, before any
  episode is initialized: they must work on a freshly compiled physics.
- `log_metrics(physics)` is called once per control step and must be cheap.
- A task with state that must survive a resume (a curriculum) passes
  `state_dict` / `load_state_dict` that use plain data (numbers, lists, dicts).

What a walker must offer (tasks/walkers/ has rat, mouse and ball): `head` (body),
`root_body` (torso), `observables.vestibular` (gyro, accelerometer, velocimeter
at the head, world z-axis in the torso frame: 12 floats), `observables.proprio`,
`observables.ego_image` (the agent's camera), `upright_height` (torso height when
standing, for spawning) and `camera_names` (its cameras). Its geoms live in
`WALKER_GEOM_GROUP` so its own camera can hide them; arenas must not put visible
geoms in that group.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Mapping, Sequence

import dreamer_rodent  # noqa: F401  (sets MUJOCO_GL before dm_control is imported)
import numpy as np
from dm_control import composer
from dm_control.composer.observation import observable as observable_lib
from dm_control.mujoco import wrapper as mj_wrapper

from tasks.registry import TaskConfigError  # noqa: F401  (tasks and walkers raise it as base.TaskConfigError)

# Sensory groups the agent can receive; `config.env.keys` lists the ones on.
KEY_GROUPS = ("image", "vestibular", "proprio", "task")
VESTIBULAR_SIZE = 12  # gyro 3, accelerometer 3, velocimeter 3, world z-axis 3

# All walker geoms are moved into this group (collision and cosmetic alike). It is
# visible in default renders (MuJoCo shows groups 0-2) and hidden from the
# walker's own camera, so the agent never sees the inside of its own skull.
WALKER_GEOM_GROUP = 2

# Render flags that cost most on a CPU renderer and carry nothing the agent needs.
CHEAP_RENDER_FLAGS = {"shadow": False, "reflection": False, "skybox": False, "haze": False, "fog": False}

# The camera near plane as a fraction of the model extent. Rodent heads are a few
# centimetres across: MuJoCo's default (0.01 of an arena-sized extent) clips.
ZNEAR = 0.0005
OFFSCREEN_SIZE = 1024

WALKERS = ("rat", "mouse", "ball")


@dataclasses.dataclass
class TaskBuild:
    """What a task factory returns: the environment and how to read it.

    `vestibular`, `proprio`, `task_obs` and `image` name observation keys of
    `env` (fully qualified composer names, e.g. 'walker/sensors_gyro'); only the
    groups on in `config.env.keys` are filled (the others are empty / None).
    """

    env: composer.Environment
    walker: Any
    vestibular: tuple[str, ...]
    proprio: tuple[str, ...]
    task_obs: dict[str, str]
    image: str | None
    log_metrics: Callable[[Any], dict[str, float]]
    state_dict: Callable[[], dict]
    load_state_dict: Callable[[dict], None]
    keys: tuple[str, ...]
    # The world beyond the walker for recordings (eval --record): name -> (value, unit, description), e.g. the
    # target's position. Tasks without one record the walker and the senses only.
    world_state: Callable[[Any], dict[str, tuple[Any, str, str]]] | None = None


def check_keys(keys: Sequence[str]) -> tuple[str, ...]:
    keys = tuple(keys)
    unknown = [k for k in keys if k not in KEY_GROUPS]
    if unknown:
        raise TaskConfigError(
            f"env.keys has unknown group(s) {unknown}; choose from {list(KEY_GROUPS)} "
            f"(e.g. --env.keys vestibular,proprio,task for a run without images)."
        )
    if not keys:
        raise TaskConfigError(f"env.keys is empty; give at least one of {list(KEY_GROUPS)}.")
    return keys


def make_walker(name: str, config, **kwargs):
    """A walker by name ('rat', 'mouse', 'ball') with our egocentric camera.

    The camera is `config.env.camera` (a walker camera name) rendered at
    `config.env.image_size` with cheap flags and the walker's own body hidden.
    """
    import importlib

    if name not in WALKERS:
        raise TaskConfigError(f"unknown walker '{name}'; known walkers: {', '.join(WALKERS)}.")
    module = importlib.import_module(f"tasks.walkers.{name}")
    cls = getattr(module, name.capitalize())
    return cls(camera=config.env.camera, image_size=check_image_size(config.env.image_size), **kwargs)


def check_image_size(size) -> int:
    """`env.image_size` as an int, or a TaskConfigError saying the range MuJoCo can render."""
    size = int(size)
    if size < 1:
        raise TaskConfigError(f"env.image_size must be a positive number of pixels, got {size}.")
    if size > OFFSCREEN_SIZE:
        raise TaskConfigError(
            f"env.image_size={size} is larger than the offscreen framebuffer the tasks render into "
            f"({OFFSCREEN_SIZE}x{OFFSCREEN_SIZE}, tasks.base.OFFSCREEN_SIZE), so MuJoCo cannot render it. The "
            f"agent's camera is 64x64 by default (DreamerV3's size) and a {size}x{size} image would cost "
            f"{3 * size * size / 2**20:.0f} MiB per replayed step; use --env.image_size {OFFSCREEN_SIZE} or less.")
    return size


def ego_scene_option() -> mj_wrapper.MjvOption:
    """Scene options for a walker's own camera: its geoms and skin hidden."""
    import mujoco

    option = mj_wrapper.MjvOption()
    option.geomgroup[WALKER_GEOM_GROUP] = 0
    option.flags[mujoco.mjtVisFlag.mjVIS_SKIN] = 0
    return option


def skin_scene_option():
    """Third-person views for people: the walker's skin without its collision geoms (WALKER_GEOM_GROUP)."""
    option = mj_wrapper.MjvOption()
    option.geomgroup[WALKER_GEOM_GROUP] = 0
    return option


class ReusedCamera(observable_lib.MJCFCamera):
    """An MJCFCamera that builds its MuJoCo camera (and scene) once per episode.

    `physics.render` makes a new `Camera`, with a new `MjvScene`, every frame:
    about 1.5 ms on a 2-core CPU, a quarter of a rat step with a 64x64 image.
    """

    def _callable(self, physics):
        from dm_control.mujoco import engine

        camera = engine.Camera(
            physics, height=self._height, width=self._width, camera_id=self._mjcf_element.full_identifier
        )

        def get_observation():
            pixels = camera.render(
                depth=self._depth,
                segmentation=self._segmentation,
                scene_option=self._scene_option,
                render_flag_overrides=self._render_flag_overrides,
            )
            return np.atleast_3d(pixels)

        return get_observation


def ego_camera_observable(camera_element, size: int) -> observable_lib.MJCFCamera:
    """The agent's image: a square RGB render with cheap flags, own body hidden."""
    return ReusedCamera(
        camera_element,
        height=size,
        width=size,
        scene_option=ego_scene_option(),
        render_flag_overrides=dict(CHEAP_RENDER_FLAGS),
    )


def move_geoms_to_walker_group(mjcf_root) -> None:
    """Puts every geom of a walker model into WALKER_GEOM_GROUP (see above)."""
    for geom in mjcf_root.find_all("geom"):
        geom.group = WALKER_GEOM_GROUP
    for default in mjcf_root.find_all("default"):
        if default.geom is not None and default.geom.group is not None:
            default.geom.group = WALKER_GEOM_GROUP


def cheapen_visuals(mjcf_root) -> None:
    """Model-wide settings for fast CPU rendering and close-up cameras."""
    mjcf_root.visual.quality.offsamples = 0  # no multisampling
    mjcf_root.visual.map.znear = ZNEAR
    # Offscreen buffer large enough for third-person eval videos (default 640x480).
    offscreen = getattr(mjcf_root.visual, "global")  # `global` is a Python keyword
    offscreen.offwidth = max(OFFSCREEN_SIZE, offscreen.offwidth or 0)
    offscreen.offheight = max(OFFSCREEN_SIZE, offscreen.offheight or 0)


class Curriculum:
    """Adaptive levels that go up and down with the recent success rate.

    `levels` are task-specific values (e.g. max target distance). The success
    rate is over the last `window` finished episodes at the current level. When
    that window is full and its rate reaches `threshold` the level goes up; when
    it falls below `down_threshold` (0: never) the level goes down. Every level
    change clears the window, so a new level is held for at least `window` of its
    own episodes before the next change: the level cannot flip back and forth
    every few episodes.

    Each episode is drawn by `draw_level`: with probability `easy_fraction` at a
    uniformly chosen easier level (none at level 0), otherwise at the current
    one. Easy episodes keep easier targets in the data and do not count towards
    the window. `pinned >= 0` fixes the level (evaluation; no easy episodes);
    `enabled=False` stays at the last level.
    """

    def __init__(self, levels: Sequence[float], threshold: float, window: int, pinned: int = -1, enabled: bool = True,
                 down_threshold: float = 0.0, easy_fraction: float = 0.0):
        levels = [float(x) for x in levels]
        if not levels:
            raise TaskConfigError("task_kwargs.curriculum_levels is empty; give at least one level.")
        if not 0.0 < threshold <= 1.0:
            raise TaskConfigError(f"task_kwargs.curriculum_threshold must be in (0, 1], got {threshold}.")
        if not 0.0 <= down_threshold < threshold:
            raise TaskConfigError(
                f"task_kwargs.curriculum_down_threshold must be in [0, curriculum_threshold={threshold}) "
                f"(0: the level never goes down), got {down_threshold}."
            )
        if not 0.0 <= easy_fraction < 1.0:
            raise TaskConfigError(f"task_kwargs.curriculum_easy_fraction must be in [0, 1), got {easy_fraction}.")
        if window < 1:
            raise TaskConfigError(f"task_kwargs.curriculum_window must be >= 1, got {window}.")
        if pinned >= len(levels):
            raise TaskConfigError(
                f"task_kwargs.level {pinned} is out of range: there are {len(levels)} levels (0..{len(levels) - 1}); "
                f"-1 lets the curriculum choose."
            )
        self.levels = levels
        self.threshold = float(threshold)
        self.down_threshold = float(down_threshold)
        self.easy_fraction = float(easy_fraction)
        self.window = int(window)
        self.pinned = int(pinned)
        self.enabled = bool(enabled)
        self._level = 0 if enabled else len(levels) - 1
        self._recent: collections.deque = collections.deque(maxlen=self.window)

    @classmethod
    def from_config(cls, config) -> "Curriculum":
        kw = config.task_kwargs
        return cls(kw.curriculum_levels, kw.curriculum_threshold, kw.curriculum_window, kw.level, kw.curriculum,
                   down_threshold=kw.get("curriculum_down_threshold", 0.0),
                   easy_fraction=kw.get("curriculum_easy_fraction", 0.0))

    @property
    def adaptive(self) -> bool:
        """Whether the level moves with success (not pinned, not switched off)."""
        return self.pinned < 0 and self.enabled

    @property
    def level(self) -> int:
        """The current level (the one episodes are drawn at unless they are easy ones)."""
        return self.pinned if self.pinned >= 0 else self._level

    @property
    def value(self) -> float:
        return self.levels[self.level]

    @property
    def success_rate(self) -> float:
        return float(np.mean(self._recent)) if self._recent else 0.0

    def draw_level(self, random_state) -> int:
        """The level of the next episode: an easier one with probability `easy_fraction`, else the current one.

        `random_state` is a numpy RandomState (the task's); it is drawn from only
        when an easy episode is possible, so level 0 draws as before.
        """
        level = self.level
        if self.adaptive and level > 0 and self.easy_fraction > 0:
            if random_state.uniform() < self.easy_fraction:
                return int(random_state.randint(0, level))
        return level

    def record(self, success: bool, level: int | None = None) -> None:
        """Records one finished episode drawn at `level` (default: the current one); may move the level.

        Only episodes at the current level count (easy ones and any drawn before
        the last change do not).
        """
        if not self.adaptive:
            return
        if level is not None and int(level) != self._level:
            return
        self._recent.append(float(bool(success)))
        if len(self._recent) < self.window:
            return
        rate = self.success_rate
        if rate >= self.threshold and self._level < len(self.levels) - 1:
            self._level += 1
            self._recent.clear()
        elif rate < self.down_threshold and self._level > 0:
            self._level -= 1
            self._recent.clear()

    def state_dict(self) -> dict:
        return {"level": int(self._level), "recent": [float(x) for x in self._recent], "levels": list(self.levels)}

    def load_state_dict(self, state: Mapping) -> None:
        if "level" not in state:
            raise TaskConfigError(f"curriculum state needs a 'level' key, got keys {sorted(state)}.")
        level = int(state["level"])
        if not 0 <= level < len(self.levels):
            raise TaskConfigError(
                f"curriculum state level {level} does not fit the {len(self.levels)} configured levels; "
                f"did task_kwargs.curriculum_levels change since the checkpoint?"
            )
        self._level = level
        self._recent.clear()
        self._recent.extend(float(x) for x in state.get("recent", [])[-self.window:])


def _no_metrics(physics) -> dict[str, float]:
    return {}


def _no_state() -> dict:
    return {}


def _ignore_state(state: dict) -> None:
    if state:
        raise TaskConfigError(f"this task keeps no curriculum state, but was given {sorted(state)}.")


def observation_names(task: composer.Task) -> dict[int, str]:
    """id(observable) -> its key in the environment's observation dict."""
    return {id(obs): name for name, obs in task.observables.items()}


def set_physics_timestep(task: composer.Task, seconds: float) -> None:
    """`env.physics_timestep`: MuJoCo's step, the control step kept (0: the task's own).

    The rat's 1 ms step is what dm_control's rodent tasks use; at 2 ms its physics runs 1.6-2x faster with random
    and still actions equally stable (no MuJoCo warnings, the same joint-speed and posture statistics), which buys
    more env steps per CPU hour (eval/RESULTS.md, "Physics timestep").
    """
    if seconds <= 0:
        return
    control = float(task.control_timestep)
    try:
        task.set_timesteps(control_timestep=control, physics_timestep=seconds)  # composer checks the division
    except ValueError:
        raise TaskConfigError(
            f"env.physics_timestep is {seconds:g} s; it must divide the task's control step of {control:g} s "
            f"a whole number of times (e.g. {', '.join(f'{x:g}' for x in _dividing(control))}), or be 0 for the "
            "task's own.") from None


def _dividing(control: float, steps=(1, 2, 4, 5, 8, 10, 20)) -> list[float]:
    return [control / n for n in steps if control / n >= 1e-4][-4:]


def build(
    task: composer.Task,
    walker,
    config,
    seed: int,
    *,
    task_obs: Mapping[str, observable_lib.Observable] | None = None,
    vestibular: Sequence[observable_lib.Observable] | None = None,
    proprio: Sequence[observable_lib.Observable] | None = None,
    image: observable_lib.Observable | None = None,
    log_metrics: Callable[[Any], dict[str, float]] | None = None,
    state_dict: Callable[[], dict] | None = None,
    load_state_dict: Callable[[dict], None] | None = None,
    world_state: Callable[[Any], dict[str, tuple[Any, str, str]]] | None = None,
    **env_kwargs,
) -> TaskBuild:
    """Wraps a composer task into a TaskBuild following `config.env`.

    Walker groups default to the walker's own (`observables.vestibular`,
    `.proprio`, `.ego_image`). Every other observable is switched off, so the
    environment computes (and renders) only what the agent receives. A physics
    divergence ends the episode as terminal (logged) instead of raising, so one
    bad action does not kill a long run.
    """
    env_kwargs.setdefault("raise_exception_on_physics_error", False)
    keys = check_keys(config.env.keys)
    vestibular = list(walker.observables.vestibular if vestibular is None else vestibular)
    proprio = list(walker.observables.proprio if proprio is None else proprio)
    image = walker.observables.ego_image if image is None else image
    task_obs = dict(task_obs or {})
    cheapen_visuals(task.root_entity.mjcf_model)

    wanted = {
        "image": [image],
        "vestibular": vestibular,
        "proprio": proprio,
        "task": list(task_obs.values()),
    }
    for obs in task.observables.values():
        obs.enabled = False
    for group in keys:
        for obs in wanted[group]:
            obs.enabled = True

    set_physics_timestep(task, float(config.env.get("physics_timestep", 0.0) or 0.0))
    # Half a physics step short of the limit: summed float timesteps land a hair
    # under it, which would add one stray control step to every episode.
    time_limit = float(config.env.time_limit)
    if time_limit <= 0:
        raise TaskConfigError(f"env.time_limit must be > 0 seconds, got {time_limit}.")
    env = composer.Environment(
        task,
        time_limit=time_limit - 0.5 * task.physics_timestep,
        random_state=int(seed),
        strip_singleton_obs_buffer_dim=True,
        **env_kwargs,
    )
    names = observation_names(task)

    def name_of(obs, what):
        if id(obs) not in names:
            raise TaskConfigError(
                f"{what} observable {obs!r} is not part of the task's observables; "
                f"add it to the walker, arena or `task_observables` of {type(task).__name__}."
            )
        return names[id(obs)]

    return TaskBuild(
        env=env,
        walker=walker,
        vestibular=tuple(name_of(o, "vestibular") for o in vestibular) if "vestibular" in keys else (),
        proprio=tuple(name_of(o, "proprio") for o in proprio) if "proprio" in keys else (),
        task_obs={k: name_of(o, f"task '{k}'") for k, o in task_obs.items()} if "task" in keys else {},
        image=name_of(image, "image") if "image" in keys else None,
        log_metrics=log_metrics or _no_metrics,
        state_dict=state_dict or _no_state,
        load_state_dict=load_state_dict or _ignore_state,
        keys=keys,
        world_state=world_state,
    )


def torso_up(physics, walker) -> float:
    """z component of the torso's z-axis in the world (1 upright, -1 on its back)."""
    return float(physics.bind(walker.root_body).xmat[8])


def head_position(physics, walker) -> np.ndarray:
    return np.array(physics.bind(walker.head).xpos)


def spawn_walker(physics, walker, random_state, position_xy, yaw: float | None = None) -> None:
    """Places the walker upright at `position_xy`, facing `yaw` (random if None)."""
    walker.reinitialize_pose(physics, random_state)
    yaw = random_state.uniform(-np.pi, np.pi) if yaw is None else yaw
    quat = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
    walker.shift_pose(physics, position=[position_xy[0], position_xy[1], 0.0], quaternion=quat, rotate_velocity=True)

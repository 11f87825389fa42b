"""Record an evaluation like a neural recording: the agent's internal state beside the body's movement, to NWB.

    python -m dreamer_rodent.eval --checkpoint RUN --record [PATH.nwb] [--record-every N] [--record-control]

One NWB file (Neurodata Without Borders, read by pynwb and the tools built on
it) holds every evaluated episode on one clock: seconds of simulated time, the
episodes one after the other (each starts one step after the last one ended)
and listed in the `epochs` table. Per recorded step:

- `processing/agent`: the RSSM deterministic state, the stochastic latent's
  probabilities and its one-hot sample, each encoder branch's embedding
  (`embed_image`, `embed_vestibular`, ...), the actor's mean and std, the action
  taken, the critic's value, the predicted reward and continue probability.
  With `--record-control`, `processing/agent_untrained` holds the same series of
  an untrained agent of the same architecture fed the same observations and
  actions: the baseline a probe analysis needs.
- `processing/behavior`: every hinge/slide joint's angle and velocity, the
  actuator controls in force, head and torso orientation, touch sensors, the
  task's world state (e.g. `target_distance`) and the reward; positions (head,
  torso, the task's e.g. `target_position`) in its `position` container.
- `acquisition`: what the animal sensed (each vector observation the agent
  read, its columns named) and `video`, an external-file ImageSeries pointing at
  the eval's MP4 with a timestamp per frame.

Each series' `comments` is JSON: `{"columns": [...]}` names its last axis where
it has names (joints, actuators, sensor channels); `actuator_ctrl` adds each
actuator's `ctrl_range`. Episodes are spooled to disk
as they finish and the NWB file is written from the spool, so a long recording
holds one episode in memory; the file appears complete or not at all.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Any, Mapping, Sequence

import numpy as np

# Agent internals (Agent.policy(..., record=True)): name -> (unit, description).
AGENT_SERIES = {
    "deter": ("a.u.", "RSSM deterministic state h_t (the GRU state after the previous action)"),
    "stoch_probs": ("probability", "posterior over the stochastic latent z_t: [latents, classes], each row sums to 1"),
    "stoch": ("one-hot", "the stochastic latent the policy used: a sample of stoch_probs (--stochastic) or its mode"),
    "actor_mean": ("normalised action", "the actor's mean action in [-1, 1] per actuator"),
    "actor_std": ("normalised action", "the actor's standard deviation per actuator"),
    "action": ("normalised action", "the action chosen on this observation, in [-1, 1] (scaled to each actuator's "
               "control range by the env); at an episode's last step it is computed but not executed"),
    "value": ("return", "the critic's value of the state (discounted return, the task's reward units)"),
    "reward": ("reward", "the reward head's prediction for this state"),
    "cont": ("probability", "the continue head's probability that the episode goes on"),
}
EMBED_UNIT = "a.u."
SPECIES = {"rat": "Rattus norvegicus", "mouse": "Mus musculus"}  # what the simulated body models


class RecordingError(Exception):
    """The recording cannot be made (pynwb missing, a bad path); the message says how to fix it."""


def require_pynwb() -> None:
    try:
        import pynwb  # noqa: F401
    except ImportError:
        raise RecordingError("--record writes NWB with pynwb, which is not installed: pip install -e '.[nwb]' "
                             "(or pip install pynwb).") from None


@dataclasses.dataclass
class Series:
    """One recorded time series: where it goes in the file and what it is."""

    name: str
    module: str  # "agent", "agent_untrained", "behavior" or "acquisition"
    unit: str
    description: str
    columns: list[str] | None = None
    kind: str = "timeseries"  # "timeseries" | "spatial" (position, reference frame world)
    extra: dict = dataclasses.field(default_factory=dict)  # more facts for `comments` (e.g. actuator ranges)


class BodyReader:
    """Reads the body and the world from MuJoCo's physics each step, for any task and walker.

    Joints: every hinge and slide joint by name (a free root joint is the torso
    pose instead). Head and torso: the walker's `head` and `root_body` where it has
    them. Touch: every MuJoCo touch sensor. World: the task's `world_state`.
    """

    def __init__(self, env):
        import mujoco

        physics = env.physics
        model = physics.model
        kinds = {int(mujoco.mjtJoint.mjJNT_HINGE): ("hinge", "rad", "rad/s"),
                 int(mujoco.mjtJoint.mjJNT_SLIDE): ("slide", "m", "m/s")}
        self._joints = [(model.id2name(j, "joint").rstrip("/"), kinds[int(model.jnt_type[j])], int(model.jnt_qposadr[j]),
                         int(model.jnt_dofadr[j])) for j in range(model.njnt) if int(model.jnt_type[j]) in kinds]
        self._qpos = np.array([q for _, _, q, _ in self._joints], np.int64)
        self._dof = np.array([d for _, _, _, d in self._joints], np.int64)
        self.actuators = [model.id2name(i, "actuator") or f"actuator{i}" for i in range(model.nu)]
        self._ctrlrange = np.asarray(model.actuator_ctrlrange, np.float64).tolist()
        touch = int(mujoco.mjtSensor.mjSENS_TOUCH)
        self._touch = [(model.id2name(i, "sensor"), int(model.sensor_adr[i])) for i in range(model.nsensor)
                       if int(model.sensor_type[i]) == touch]
        self._bodies = {}
        walker = getattr(env, "walker", None)
        for label, attr in (("head", "head"), ("torso", "root_body")):
            element = getattr(walker, attr, None) if walker is not None else None
            if element is not None and hasattr(element, "full_identifier"):
                self._bodies[label] = model.name2id(element.full_identifier, "body")
        build = getattr(env, "_build", None)
        self._world = getattr(build, "world_state", None)
        self._world_series = {}
        if self._world is not None:
            for name, (value, unit, description) in self._world(physics).items():
                spatial = name.endswith("position") and np.size(value) == 3
                self._world_series[name] = Series(name, "behavior", unit, description, ["x", "y", "z"] if spatial
                                                  else None, "spatial" if spatial else "timeseries")

    def series(self) -> list[Series]:
        out = []
        if self._joints:
            names = [n for n, _, _, _ in self._joints]
            kinds = sorted({k[0] for _, k, _, _ in self._joints})
            unit = "rad" if kinds == ["hinge"] else "m" if kinds == ["slide"] else "rad (hinge) or m (slide)"
            vel = "rad/s" if kinds == ["hinge"] else "m/s" if kinds == ["slide"] else "rad/s (hinge) or m/s (slide)"
            out += [Series("joint_angle", "behavior", unit, f"position of every {'/'.join(kinds)} joint (qpos)", names),
                    Series("joint_velocity", "behavior", vel, "velocity of every joint (qvel), as joint_angle", names)]
        if self.actuators:
            out.append(Series("actuator_ctrl", "behavior", "actuator control units",
                              "the control signal in force when the observation was made (MuJoCo data.ctrl): the "
                              "previous step's action scaled to each actuator's range (comments: ctrl_range, "
                              "action a -> low + (a + 1) / 2 * (high - low)); zeros at an episode's start",
                              self.actuators, extra={"ctrl_range": self._ctrlrange}))
        for label in self._bodies:
            out += [Series(f"{label}_position", "behavior", "m", f"world position (x, y, z) of the {label} body",
                           ["x", "y", "z"], "spatial"),
                    Series(f"{label}_orientation", "behavior", "unit quaternion",
                           f"world orientation of the {label} body as a quaternion (w, x, y, z)", ["w", "x", "y", "z"])]
        if self._touch:
            out.append(Series("touch", "behavior", "N", "MuJoCo touch sensors: normal contact force in each zone",
                              [n for n, _ in self._touch]))
        out += list(self._world_series.values())
        return out

    def read(self, physics) -> dict[str, np.ndarray]:
        data = physics.data
        out = {}
        if self._joints:
            out["joint_angle"] = np.asarray(data.qpos[self._qpos], np.float32)
            out["joint_velocity"] = np.asarray(data.qvel[self._dof], np.float32)
        if self.actuators:
            out["actuator_ctrl"] = np.asarray(data.ctrl, np.float32).copy()
        for label, body in self._bodies.items():
            out[f"{label}_position"] = np.asarray(data.xpos[body], np.float32).copy()
            out[f"{label}_orientation"] = np.asarray(data.xquat[body], np.float32).copy()
        if self._touch:
            out["touch"] = np.asarray([data.sensordata[a] for _, a in self._touch], np.float32)
        if self._world is not None:
            for name, (value, _, _) in self._world(physics).items():
                out[name] = np.asarray(value, np.float32)
        return out


class Spool:
    """Rows appended per episode to one raw file per series; read back as memory maps (one episode in memory)."""

    def __init__(self, directory: pathlib.Path):
        self.dir = directory
        self.shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self.rows: dict[str, int] = {}

    def append(self, name: str, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows)
        shape = (rows.shape[1:], rows.dtype)
        if name not in self.shapes:
            self.shapes[name], self.rows[name] = shape, 0
        elif self.shapes[name] != shape:
            raise RecordingError(f"series {name} changed shape or dtype from {self.shapes[name]} to {shape}.")
        with open(self._file(name), "ab") as f:
            f.write(rows.tobytes())
        self.rows[name] += len(rows)

    def array(self, name: str) -> np.ndarray:
        shape, dtype = self.shapes[name]
        if self.rows[name] == 0:
            return np.zeros((0, *shape), dtype)
        return np.memmap(self._file(name), dtype=dtype, mode="r", shape=(self.rows[name], *shape))

    def _file(self, name: str) -> pathlib.Path:
        return self.dir / f"{list(self.shapes).index(name)}.bin"


class Recorder:
    """Collects one evaluation's steps and writes the NWB file at `close()`.

    The eval calls `step_body` on every observation (before the policy acts),
    `step_agent` with the policy's internals for that observation, and
    `end_episode` with the episode's scores; the recorder keeps steps 0, N,
    2N, ... of each episode (`record_every = N`). `metadata` goes into the file as-is.
    """

    def __init__(self, path, env, internal_names: Sequence[str], action_size: int,
                 dt: float, metadata: Mapping[str, Any], record_every: int = 1, control: bool = False):
        require_pynwb()
        if record_every < 1:
            raise RecordingError(f"--record-every must be >= 1, got {record_every}.")
        self.path = pathlib.Path(path)
        if self.path.suffix.lower() != ".nwb":
            raise RecordingError(f"--record {self.path}: the recording must end in .nwb.")
        if self.path.is_dir():
            raise RecordingError(f"--record {self.path} is a directory; give a file name ending in .nwb.")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{self.path.stem}.", suffix=".spool",
                                                      dir=self.path.parent))
        except OSError as error:
            raise RecordingError(f"--record {self.path}: cannot write there ({error.strerror}); choose a writable "
                                 f"directory.") from None
        self.every = int(record_every)
        self.dt = float(dt)
        self.metadata = dict(metadata)
        self.body = BodyReader(env)
        actuators = self.body.actuators  # the action's columns where the action drives the actuators one to one
        action_columns = actuators if len(actuators) == action_size else [f"action[{i}]" for i in range(action_size)]
        self.modules = ["agent"] + (["agent_untrained"] if control else [])
        self.series: dict[str, Series] = {}
        for module in self.modules:
            for name in [*internal_names, "action"]:  # Agent.internal_names, and the action the eval took
                self._add(self._agent_series(module, name, action_columns))
        for series in self.body.series():
            self._add(series)
        columns = env.obs_columns
        self._senses = list(columns)
        for key in self._senses:
            self._add(Series(f"obs_{key}", "acquisition", "observation units",
                             f"the env's '{key}' observation (as the agent receives it, before symlog; a key the "
                             f"agent's config does not read is recorded too), one number per column",
                             columns[key]))
        self._add(Series("reward", "behavior", "reward", "the reward that came with this observation (the task's "
                                                          "reward for the step into it; 0 at an episode's start)"))
        self.spool = Spool(self._tmp)
        self.episodes: list[dict] = []
        self.frames: list[int] = []  # MP4 frames per episode
        self._rows: dict[str, list] = {}
        self._times: list[float] = []
        self._clock = 0.0
        self._keep = False

    def _add(self, series: Series) -> None:
        self.series[f"{series.module}/{series.name}"] = series

    @staticmethod
    def _series_name(internal: str) -> str:
        """An agent internal's series name: `embed/image` -> `embed_image`."""
        return internal.replace("/", "_")

    @staticmethod
    def _agent_series(module: str, name: str, action_columns: Sequence[str]) -> Series:
        if name.startswith("embed/"):
            branch = name.split("/", 1)[1]
            return Series(Recorder._series_name(name), module, EMBED_UNIT,
                          f"the {branch} encoder's embedding of this step's observation (its input to the posterior)")
        unit, description = AGENT_SERIES[name]
        if module == "agent_untrained" and name == "action":
            description = ("the action the untrained agent would choose here (never executed: it is fed the trained "
                           "agent's executed action)")
        columns = list(action_columns) if name in ("actor_mean", "actor_std", "action") else None
        return Series(name, module, unit, description, columns)

    # ---- per step

    def keeps(self, step: int) -> bool:
        return step % self.every == 0

    def step_body(self, physics, obs: Mapping[str, np.ndarray], step: int) -> None:
        """The body, the world and the senses at observation `step` of the current episode."""
        self._keep = self.keeps(step)
        if not self._keep:
            return
        self._times.append(self._clock + step * self.dt)
        rows = self.body.read(physics)
        rows["reward"] = np.float32(obs["reward"])
        for key in self._senses:
            rows[f"obs_{key}"] = np.asarray(obs[key], np.float32).reshape(-1)
        for name, value in rows.items():
            module = "acquisition" if name.startswith("obs_") else "behavior"
            self._rows.setdefault(f"{module}/{name}", []).append(value)

    def step_agent(self, internals: Mapping[str, np.ndarray], action: np.ndarray, module: str = "agent") -> None:
        """The agent's internals for the observation of the last `step_body` (batch row 0)."""
        if not self._keep:
            return
        for name, value in internals.items():
            self._rows.setdefault(f"{module}/{self._series_name(name)}", []).append(np.asarray(value)[0])
        self._rows.setdefault(f"{module}/action", []).append(np.asarray(action, np.float32))

    def end_episode(self, scores: Mapping[str, Any], frames: int, steps: int) -> None:
        """Spools the finished episode (`steps` actions, `frames` video frames) and starts the next on the clock."""
        lengths = {key: len(rows) for key, rows in self._rows.items()}
        if len(set(lengths.values()) | {len(self._times)}) != 1:
            raise RecordingError(f"recorded series disagree in length: {lengths}, {len(self._times)} timestamps.")
        for key, rows in self._rows.items():
            self.spool.append(key, np.stack(rows))
        self.spool.append("timestamps", np.asarray(self._times, np.float64))
        self.spool.append("frame_times", self._clock + np.arange(frames, dtype=np.float64) * self.dt)
        start = self._clock
        self.episodes.append({"start_time": start, "stop_time": start + steps * self.dt, "scores": dict(scores)})
        self.frames.append(int(frames))
        self._clock = start + (steps + 1) * self.dt
        self._rows, self._times = {}, []

    # ---- the file

    def close(self, videos: Sequence[str] = ()) -> pathlib.Path:
        """Writes the NWB file (via a temporary name, then renamed) and removes the spool."""
        try:
            if not self.episodes:
                raise RecordingError("no episode was recorded.")
            tmp = self.path.with_name(f".{self.path.stem}.tmp.nwb")
            try:
                self._write(tmp, videos)
                os.replace(tmp, self.path)
            except OSError as error:
                raise RecordingError(f"writing {self.path} failed ({error}); the evaluation's video and JSON are "
                                     f"kept, rerun with --record PATH on a disk with space.") from None
            return self.path
        finally:
            self.discard()

    def discard(self) -> None:
        """Removes the spool (and a half-written file) without writing: an interrupted evaluation leaves nothing."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        self.path.with_name(f".{self.path.stem}.tmp.nwb").unlink(missing_ok=True)

    def _write(self, path: pathlib.Path, videos: Sequence[str]) -> None:
        from hdmf.backends.hdf5.h5_utils import H5DataIO
        from hdmf.data_utils import DataChunkIterator
        from pynwb import NWBHDF5IO, NWBFile, TimeSeries
        from pynwb.behavior import Position, SpatialSeries
        from pynwb.file import Subject
        from pynwb.image import ImageSeries

        meta = self.metadata

        def stream(array):
            return H5DataIO(DataChunkIterator(data=array, buffer_size=4096), compression="gzip")

        nwb = NWBFile(
            session_description=f"dreamer_rodent evaluation of {meta.get('checkpoint', '?')} on task "
                                f"{meta.get('task', '?')}: {len(self.episodes)} episode(s)",
            identifier=str(uuid.uuid4()),
            session_start_time=datetime.datetime.now(datetime.timezone.utc),
            experiment_description=json.dumps({k: v for k, v in meta.items() if k != "config"}, sort_keys=True),
            notes=str(meta.get("config", "")),
            source_script="python -m dreamer_rodent.eval --record",
            source_script_file_name="dreamer_rodent/eval.py",
            keywords=["dreamer_rodent", "DreamerV3", "world model", "virtual rodent", str(meta.get("task", ""))],
        )
        walker = str(meta.get("walker", "") or "none")
        nwb.subject = Subject(subject_id=walker, species=SPECIES.get(walker, "simulated body"),
                              description=f"simulated {walker} (MuJoCo via dm_control) controlled by a DreamerV3 agent")
        columns = {"episode": "episode number (1-based)", "return": "sum of rewards", "length": "steps (actions)",
                   "frames": "MP4 frames of the episode (length + 1)"}
        extra = sorted({k for e in self.episodes for k, v in e["scores"].items()
                        if k not in columns and isinstance(v, (int, float, bool))})
        for name, doc in columns.items():
            nwb.add_epoch_column(name, doc)
        for name in extra:
            nwb.add_epoch_column(name, f"the eval JSON's per-episode '{name}'")
        for index, (episode, frames) in enumerate(zip(self.episodes, self.frames)):
            scores = episode["scores"]
            values = {"episode": index + 1, "return": float(scores.get("return", np.nan)),
                      "length": int(scores.get("length", 0)), "frames": frames}
            values.update({k: float(scores[k]) if scores.get(k) is not None else np.nan for k in extra})
            nwb.add_epoch(start_time=episode["start_time"], stop_time=episode["stop_time"], tags=["episode"], **values)

        modules = {}
        descriptions = {"agent": "the trained agent's internal state, step by step",
                        "agent_untrained": "an untrained agent of the same architecture (the checkpoint's config, "
                                           "initial weights) fed the same observations and actions: a control",
                        "behavior": "the body's kinematics, actuator commands, touch, the task's world state, reward"}
        clock = None  # the first series written owns the timestamps; every other one links to them
        position = None
        for key, series in self.series.items():
            if key not in self.spool.shapes:
                continue
            data = self.spool.array(key)
            comments = json.dumps({**({"columns": series.columns} if series.columns else {}), **series.extra})
            common = dict(name=series.name, data=stream(data), unit=series.unit, description=series.description,
                          comments=comments)
            if clock is None:
                common["timestamps"] = stream(self.spool.array("timestamps"))
            else:
                common["timestamps"] = clock
            if series.module not in modules and series.module != "acquisition":
                modules[series.module] = nwb.create_processing_module(series.module, descriptions[series.module])
            if series.kind == "spatial":  # behavior/position/<name>: NWB's container for positions
                ts = SpatialSeries(reference_frame="world: z up, origin at the arena centre", **common)
                if position is None:
                    position = Position(name="position")
                    modules[series.module].add(position)
                position.add_spatial_series(ts)
            else:
                ts = TimeSeries(**common)
                if series.module == "acquisition":
                    nwb.add_acquisition(ts)
                else:
                    modules[series.module].add(ts)
            if clock is None:
                clock = ts
        if videos:
            starting = list(np.cumsum([0] + self.frames[:-1])) if len(videos) > 1 else [0]
            nwb.add_acquisition(ImageSeries(
                name="video", external_file=[os.path.relpath(v, path.parent) for v in videos], format="external",
                starting_frame=[int(s) for s in starting], timestamps=stream(self.spool.array("frame_times")),
                description="the eval's third-person MP4(s), one timestamp per frame on the recording's clock "
                            "(with --record-every 1, frame i of an episode is its recorded step i)",
                unit="n.a."))
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)


"""Devices for training: JAX platform settings, multi-host start-up and the data mesh.

Everything here must run before the first JAX computation: the platform, GPU
memory preallocation and `jax.distributed.initialize` cannot change afterwards.
The mesh has one axis, "data": the agent splits each batch over it and keeps
parameters replicated, so the same code runs on one CPU, one GPU or many hosts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping

from dreamer_rodent.config import Config, ConfigError

AXIS = "data"
DEFAULT_PORT = 12355
# `auto` leaves the choice to JAX: a GPU when a CUDA jaxlib sees one, else the CPU,
# so the same command trains on a laptop and on a cluster node.
_PLATFORMS = {"auto": None, "cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "tpu": "tpu"}


@dataclasses.dataclass(frozen=True)
class MultiHost:
    coordinator: str
    num_processes: int
    process_id: int
    source: str  # "config" or "SLURM"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (`node[03-05,9],gpu1` -> `node03`)."""
    nodelist = nodelist.strip()
    match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not match:
        raise ConfigError(f"cannot read the SLURM node list '{nodelist}'; set --jax.coordinator HOST:PORT.")
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def multihost_settings(config: Config, environ: Mapping[str, str] | None = None) -> MultiHost | None:
    """Multi-host settings from the config or, failing that, SLURM; None for one process.

    Config wins (`jax.num_processes > 1` with `jax.coordinator` and
    `jax.process_id`). Under SLURM with more than one task, the process count and
    id come from SLURM_NTASKS / SLURM_PROCID and the coordinator is the first
    node of the job on `jax.coordinator`'s port (or 12355), unless set.
    """
    environ = os.environ if environ is None else environ
    num = int(config.jax.num_processes)
    if num < 1:
        raise ConfigError(f"jax.num_processes must be >= 1, got {num}.")
    if num > 1:
        pid = int(config.jax.process_id)
        if not 0 <= pid < num:
            raise ConfigError(f"jax.process_id must be in [0, {num}), got {pid}.")
        if not config.jax.coordinator:
            raise ConfigError(
                f"jax.num_processes={num} needs --jax.coordinator HOST:PORT (the address of process 0)."
            )
        return MultiHost(str(config.jax.coordinator), num, pid, "config")
    tasks = environ.get("SLURM_NTASKS") or environ.get("SLURM_STEP_NUM_TASKS")
    if tasks and int(tasks) > 1 and "SLURM_PROCID" in environ:
        coordinator = str(config.jax.coordinator)
        if not coordinator:
            nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
            if not nodes:
                raise ConfigError("SLURM runs several tasks but sets no node list; set --jax.coordinator HOST:PORT.")
            coordinator = f"{first_host(nodes)}:{DEFAULT_PORT}"
        elif ":" not in coordinator:
            coordinator = f"{coordinator}:{DEFAULT_PORT}"
        return MultiHost(coordinator, int(tasks), int(environ["SLURM_PROCID"]), "SLURM")
    return None


def setup(config: Config, environ: Mapping[str, str] | None = None) -> MultiHost | None:
    """Applies `jax.*` settings and joins a multi-host job; call before any JAX use."""
    platform = str(config.jax.platform).lower()
    if platform not in _PLATFORMS:
        raise ConfigError(f"jax.platform must be one of auto, cpu, gpu, tpu; got '{config.jax.platform}'.")
    if not config.jax.prealloc:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    if _PLATFORMS[platform] is not None:
        jax.config.update("jax_platforms", _PLATFORMS[platform])
    if config.jax.debug_nans:
        jax.config.update("jax_debug_nans", True)
    cache = str(config.jax.get("cache_dir", "") or "")
    if cache:
        # Compiling the agent takes minutes on a CPU; a resumed or repeated run reuses the result.
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    hosts = multihost_settings(config, environ)
    if hosts is not None:
        jax.distributed.initialize(
            coordinator_address=hosts.coordinator,
            num_processes=hosts.num_processes,
            process_id=hosts.process_id,
        )
    return hosts


def local_devices(config: Config):
    """The local devices of `jax.platform`, the first `jax.devices` of them if >= 1."""
    import jax

    platform = str(config.jax.platform).lower()
    try:
        devices = jax.local_devices(backend=_PLATFORMS[platform])
    except (RuntimeError, AssertionError) as error:
        # With jax_platforms=cuda and no NVIDIA device JAX initialises no backend and fails a bare `assert`.
        raise ConfigError(platform_unavailable(platform, error)) from None
    count = int(config.jax.devices)
    if count >= 1:
        if count > len(devices):
            raise ConfigError(f"jax.devices={count} but only {len(devices)} {platform} devices are visible.")
        devices = devices[:count]
    return devices


def platform_unavailable(platform: str, error: BaseException | None = None) -> str:
    """Why JAX cannot use `platform` here and what to do, as one message."""
    import glob
    import importlib.metadata
    import shutil

    plugins = sorted({dist.metadata["Name"] for dist in importlib.metadata.distributions()
                      if re.match(r"^(jax[-_](cuda|rocm)\d*[-_](plugin|pjrt)|libtpu)", dist.metadata["Name"] or "",
                                  re.IGNORECASE)})
    reason = str(error).strip().splitlines()[0] if error is not None and str(error).strip() else ""
    if platform in ("gpu", "cuda"):
        facts = ["installed JAX backends: " + ", ".join(["cpu"] + plugins)]
        if not any(re.match(r"jax[-_]cuda", p, re.IGNORECASE) for p in plugins):
            facts.append("no CUDA plugin is installed")
        if not glob.glob("/dev/nvidia[0-9]*"):
            facts.append("no NVIDIA device under /dev")
        if shutil.which("nvidia-smi") is None:
            facts.append("nvidia-smi is not on PATH")
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        if hidden is not None and hidden.strip() in ("", "-1"):
            facts.append(f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU")
        if reason:
            facts.append(f"JAX says: {reason}")
        return (f"jax.platform={platform} but JAX sees no GPU here ({'; '.join(facts)}). Install the cuda12 extra "
                "(pip install -e \".[cuda12]\"), check that nvidia-smi lists the GPU, or use --jax.platform cpu "
                "(or auto: a GPU when JAX sees one, else the CPU).")
    facts = "; ".join(x for x in ("installed JAX backends: " + ", ".join(["cpu"] + plugins),
                                  f"JAX says: {reason}" if reason else "") if x)
    return (f"jax.platform={platform} but JAX cannot use it here ({facts}). Install the matching jax plugin "
            "(pip install 'jax[tpu]' for a TPU), or use --jax.platform cpu or auto.")


def make_mesh(config: Config):
    """A one-axis ("data") mesh over the training devices, checked against the batch size.

    On several hosts the mesh spans every process's devices, in process order;
    `batch_size` is the global batch and must divide over all of them.
    """
    import jax
    import numpy as np

    local = local_devices(config)
    check_batch(int(config.batch_size), len(local) * jax.process_count())
    if jax.process_count() > 1:
        per_process = len(local)
        devices = [d for d in jax.devices() if d.platform == local[0].platform]
        by_process = sorted(devices, key=lambda d: (d.process_index, d.id))
        devices = [d for p in range(jax.process_count()) for d in [x for x in by_process if x.process_index == p][:per_process]]
    else:
        devices = local
    return jax.sharding.Mesh(np.array(devices), (AXIS,))


def check_batch(batch_size: int, num_devices: int) -> None:
    """A batch that does not split evenly over the devices is an error, before anything is built."""
    if batch_size < 1 or batch_size % num_devices:
        lower = max(num_devices, batch_size // num_devices * num_devices)
        raise ConfigError(
            f"batch_size={batch_size} does not divide over {num_devices} devices (each device trains an equal "
            f"share of the batch). Use --batch_size {lower} or {lower + num_devices}, or limit the devices "
            f"with --jax.devices."
        )


def agree(flags) -> list[bool]:
    """Any process's True wins; one process: the flags unchanged (no collective)."""
    import jax
    import numpy as np

    flags = np.asarray(flags, bool)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        flags = np.asarray(multihost_utils.process_allgather(flags.astype(np.int32))).reshape(-1, flags.size).max(0) > 0
    return [bool(f) for f in flags]

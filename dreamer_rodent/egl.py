"""Which GPU an env renders on (`MUJOCO_EGL_DEVICE_ID`).

dm_control opens its EGL display when its renderer is first imported, so the
choice must be made in a worker's environment before that. Spreading workers
over the GPUs keeps N renderers from piling onto GPU 0.
"""

from __future__ import annotations

import os
import re
import sys


def select_egl_device(
    index: int,
    egl_device: int = -1,
    cuda_visible_devices: str | None = None,
    gpu_count: int = 0,
    preset: str | None = None,
) -> str | None:
    """The `MUJOCO_EGL_DEVICE_ID` for worker `index`, or None to leave it unset.

    Order of precedence: `egl_device >= 0` pins one device; a value the user
    already exported (`preset`) is kept; else round robin over the integer ids
    in CUDA_VISIBLE_DEVICES (EGL enumerates physical devices, so the listed
    physical ids are the right ones); else round robin over `gpu_count`
    devices; with no GPU (CPU/Mesa) None.
    """
    if egl_device >= 0:
        return str(int(egl_device))
    if preset not in (None, ""):
        return str(preset)
    if cuda_visible_devices is not None:
        entries = [e.strip() for e in cuda_visible_devices.split(",") if e.strip()]
        if not entries or entries[0] == "-1":
            return None  # CUDA hidden on purpose: render wherever EGL picks.
        if all(re.fullmatch(r"\d+", e) for e in entries):
            return entries[index % len(entries)]
        # UUIDs or MIG names have no EGL index we can derive: fall back to the
        # position in the list, which is right when all GPUs are listed in order.
        return str(index % len(entries))
    if gpu_count > 0:
        return str(index % gpu_count)
    return None


def count_nvidia_gpus() -> int:
    """Number of NVIDIA GPUs the driver exposes (device files /dev/nvidiaN)."""
    try:
        return sum(1 for name in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", name))
    except OSError:
        return 0


def egl_device_for(config, index: int) -> str | None:
    """`select_egl_device` with this process's environment and GPUs."""
    if os.environ.get("MUJOCO_GL", "egl") != "egl":
        return None
    return select_egl_device(
        index,
        int(config.env.egl_device) if "env.egl_device" in config else -1,
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        count_nvidia_gpus(),
        os.environ.get("MUJOCO_EGL_DEVICE_ID"),
    )


def apply_egl_device(config, index: int) -> int | None:
    """Sets MUJOCO_EGL_DEVICE_ID for this process unless dm_control already renders."""
    device = egl_device_for(config, index)
    if device is None:
        return None
    if "dm_control._render" not in sys.modules:
        os.environ["MUJOCO_EGL_DEVICE_ID"] = device
    return int(device)

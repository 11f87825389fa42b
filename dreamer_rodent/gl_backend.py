"""The OpenGL backend dm_control renders with (`MUJOCO_GL`), checked before dm_control is imported.

dm_control loads its backend on first import, and a backend that cannot work
there fails deep inside PyOpenGL or GLFW (`'NoneType' object has no attribute
'glGetError'`, `X11: The DISPLAY environment variable is missing`). Every
command checks the choice first, so a wrong one is one line that says which
backend works instead. The checks only look (environment, library search), they
open no display: dm_control must open EGL on the device `egl.py` picks.
"""

from __future__ import annotations

import ctypes.util
import os

BACKENDS = ("egl", "osmesa", "glfw")
GLFW_ALIASES = ("on", "enable", "enabled", "true", "1", "")  # dm_control's other names (_render/constants.py)
NO_RENDERER = ("off", "disable", "disabled", "false", "0")


class GLBackendError(RuntimeError):
    """MUJOCO_GL names a backend that cannot work on this machine; the message says which one can."""


def problem(environ=None, find_library=ctypes.util.find_library) -> str | None:
    """Why `MUJOCO_GL` cannot work here, or None if it can (as far as can be told without opening it)."""
    environ = os.environ if environ is None else environ
    given = environ.get("MUJOCO_GL", "egl")
    if given in NO_RENDERER:
        return None  # dm_control's "no rendering": fine for proprio-only runs, its own error otherwise
    backend = "glfw" if given in GLFW_ALIASES else given
    if backend not in BACKENDS:
        return (f"MUJOCO_GL={given} is not a rendering backend dm_control knows. Use MUJOCO_GL=egl (the "
                f"default: GPU driver or Mesa, headless), osmesa (software) or glfw (a desktop with a display).")
    if backend == "glfw" and not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        return ("MUJOCO_GL=glfw needs a display (an X11 or Wayland session), and DISPLAY is not set here: this is "
                "a headless machine (a cluster node, Docker, ssh). Unset MUJOCO_GL (the default is egl) or use "
                "MUJOCO_GL=egl; without an EGL driver, MUJOCO_GL=osmesa (apt-get install libosmesa6).")
    if backend == "osmesa" and not find_library("OSMesa"):
        return ("MUJOCO_GL=osmesa but the OSMesa library (libOSMesa.so) is not installed. Install it (apt-get "
                "install libosmesa6; conda install -c conda-forge mesalib), or unset MUJOCO_GL to render with "
                "egl (the default).")
    if backend == "egl" and not find_library("EGL"):
        return ("MUJOCO_GL=egl (the default) but no EGL library (libEGL.so) is installed. Install one: the "
                "NVIDIA driver brings it on a GPU machine, else apt-get install libegl1 libgl1-mesa-dri; or use "
                "MUJOCO_GL=osmesa with libosmesa6.")
    return None


def check() -> None:
    """Raises GLBackendError if `MUJOCO_GL` cannot work here."""
    message = problem()
    if message is not None:
        raise GLBackendError(message)

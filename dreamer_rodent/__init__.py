"""dreamer_rodent: DreamerV3-style world-model RL for virtual rodents in MuJoCo."""

import os

# dm_control picks its GL backend when it is first imported; without a display the
# GLFW default fails, so default to EGL (GPU driver or Mesa) unless the user chose.
os.environ.setdefault("MUJOCO_GL", "egl")

__version__ = "0.1.0"

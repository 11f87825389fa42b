# dreamer_rodent on an NVIDIA GPU: CUDA 12 + cuDNN, Python, EGL for headless MuJoCo.
#
#   docker build -t dreamer_rodent .
#   docker build --build-arg CUDA_VERSION=12.6.3 --build-arg PYTHON_VERSION=3.12 -t dreamer_rodent .
#   launch/docker_run.sh --gpus 0 -- --task rodent_goto --logdir /logdir/goto1
#
# The host needs the NVIDIA driver and the NVIDIA Container Toolkit. A lower
# CUDA_VERSION runs on older drivers (the toolkit refuses to start the container
# when the driver is older than the image's CUDA); JAX's cuda12 wheels bring
# their own CUDA libraries and need a driver for CUDA 12.
#
# Running the image: arguments that start with '-' go to
# `python -m dreamer_rodent.train` (with `--jax.platform gpu` added when a GPU is
# visible and the arguments do not set it); anything else is run as a command,
# e.g. `python -m dreamer_rodent.eval --checkpoint /logdir/goto1`.

ARG CUDA_VERSION=12.4.1
ARG UBUNTU_VERSION=22.04
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION}

# labmaze (the maze tasks) ships wheels for CPython 3.10-3.12 only, and the
# dependency layer below reads pyproject.toml with tomllib (3.11+): use 3.11 or 3.12.
ARG PYTHON_VERSION=3.11

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python from the deadsnakes PPA (any of 3.10-3.12 on Ubuntu 22.04), and the
# GLVND/EGL libraries MuJoCo renders through: the NVIDIA driver's EGL on a GPU
# (mounted by the container toolkit, see NVIDIA_DRIVER_CAPABILITIES), Mesa's
# software EGL as the CPU fallback.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gnupg software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
        libglvnd0 libegl1 libgl1 libopengl0 libgles2 \
        libegl-mesa0 libgl1-mesa-dri \
    && rm -rf /var/lib/apt/lists/*

# GLVND finds the NVIDIA EGL driver through this vendor file. Recent container
# toolkits mount it (over this copy); older ones do not, and without it EGL
# would silently fall back to Mesa's CPU renderer.
RUN mkdir -p /usr/share/glvnd/egl_vendor.d \
    && printf '%s\n' '{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0"}}' \
        > /usr/share/glvnd/egl_vendor.d/10_nvidia.json

RUN "python${PYTHON_VERSION}" -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --no-cache-dir --upgrade pip setuptools wheel

# MUJOCO_GL must be set before dm_control is imported; the NVIDIA variables make
# the container toolkit mount the driver's graphics (EGL) libraries, not only CUDA.
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    MUJOCO_GL=egl \
    PYOPENGL_PLATFORM=egl \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=all

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml
# changes, not on every source edit. The list is the project's dependencies plus
# its cuda12 extra, the same extra the editable install below names.
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["cuda12"]))' \
        > /tmp/requirements.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements.txt

# The source, installed editable: configs.yaml stays at the repository root where
# dreamer_rodent.config finds it.
COPY . .
RUN python -m pip install --no-cache-dir -e ".[cuda12]" \
    && chmod 0755 launch/*.sh \
    && mkdir -p /logdir \
    && chmod 1777 /logdir \
    && ln -s /logdir /app/logdir

# Runs as any uid (launch/docker_run.sh uses yours so that run files are yours).
# WORKDIR /app: a run without --logdir lands in ./logdir, which is /logdir, the mount.
ENV HOME=/tmp
WORKDIR /app
ENTRYPOINT ["/app/launch/docker_entrypoint.sh"]

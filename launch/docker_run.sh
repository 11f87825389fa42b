#!/usr/bin/env bash
# Runs the dreamer_rodent image on this host's GPUs with a run directory mounted.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/docker_run.sh [options] [-- CONTAINER_ARGS...]

Runs the dreamer_rodent Docker image (build it with `docker build -t dreamer_rodent .`)
with GPUs, the host log directory mounted at /logdir, a /dev/shm large enough for
the env worker processes, and your uid:gid so run files on the host are yours.
CONTAINER_ARGS go to the image: flags (starting with '-') are train flags, anything
else is a command, e.g. `-- python -m dreamer_rodent.eval --checkpoint /logdir/goto1`.

Options:
  -i, --image NAME      image to run (default: $DREAMER_RODENT_IMAGE or dreamer_rodent)
  -g, --gpus SPEC       all (default), none, or host GPU indices or UUIDs: 0 or 0,2
  -l, --logdir DIR      host directory mounted at /logdir (default: ./logdir);
                        pass --logdir /logdir/NAME to train to keep a run there
      --shm-size SIZE   /dev/shm size (default: 16g; Docker's 64m is too small)
  -e, --env VAR=VALUE   set a variable in the container (repeatable)
      --name NAME       container name
      --host-network    use the host network (multi-host runs: the coordinator port)
      --as-root         run as root instead of your uid:gid
  -n, --dry-run         print the commands instead of running them
  -h, --help            show this help

MUJOCO_EGL_DEVICE_ID: with one chosen GPU (--gpus 2) the container sees only that
GPU, as EGL device 0 (host numbering does not carry into the container), so it is
set to 0, not 2. With several GPUs it is left unset and the env workers spread
over the visible devices themselves.

Examples:
  launch/docker_run.sh --gpus 0 -- --task rodent_goto --logdir /logdir/goto1
  launch/docker_run.sh --gpus 0,2 --logdir /scratch/me/runs -- --task rodent_goto --logdir /logdir/goto2
  launch/docker_run.sh --gpus none -- python -m dreamer_rodent.tasks
EOF
}

die() {
  echo "docker_run.sh: $*" >&2
  exit 2
}

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

image="${DREAMER_RODENT_IMAGE:-dreamer_rodent}"
gpus=all
logdir=logdir
shm_size=16g
name=""
host_network=0
as_root=0
envs=()
container_args=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    -n | --dry-run) dry_run=1; shift ;;
    -i | --image) need_value "$@"; image="$2"; shift 2 ;;
    -g | --gpus) need_value "$@"; gpus="$2"; shift 2 ;;
    -l | --logdir) need_value "$@"; logdir="$2"; shift 2 ;;
    --shm-size) need_value "$@"; shm_size="$2"; shift 2 ;;
    -e | --env) need_value "$@"; envs+=("$2"); shift 2 ;;
    --name) need_value "$@"; name="$2"; shift 2 ;;
    --host-network) host_network=1; shift ;;
    --as-root) as_root=1; shift ;;
    --) shift; container_args=("$@"); break ;;
    *) die "unknown option '$1'. Options come before '--'; arguments for the container after it: launch/docker_run.sh [options] -- ARGS (see --help)" ;;
  esac
done

# GPU selection. Docker splits --gpus on commas, so a device list is quoted:
# --gpus '"device=0,2"'.
gpu_args=()
egl_args=()
case "$gpus" in
  all) gpu_args=(--gpus all) ;;
  none) ;;
  *)
    [[ "$gpus" =~ ^[A-Za-z0-9-]+(,[A-Za-z0-9-]+)*$ ]] \
      || die "bad --gpus '$gpus': use all, none, or GPU indices/UUIDs separated by commas, like 0,2"
    gpu_args=(--gpus "\"device=$gpus\"")
    if [[ "$gpus" != *,* ]]; then
      # The one GPU is the container's only NVIDIA EGL device: index 0.
      egl_args=(-e MUJOCO_EGL_DEVICE_ID=0)
    fi
    ;;
esac

[[ "$logdir" != *:* ]] || die "the log directory '$logdir' contains ':', which docker -v cannot mount; use a path without ':'"
[[ "$logdir" == /* ]] || logdir="$PWD/$logdir"
[[ "$shm_size" =~ ^[0-9]+[bkmgBKMG]?$ ]] || die "bad --shm-size '$shm_size': use a size like 16g or 8192m"
for kv in "${envs[@]}"; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*=  ]] || die "bad --env '$kv': use VAR=VALUE"
done

if [[ "$dry_run" == 0 ]] && ! command -v docker >/dev/null 2>&1; then
  die "docker not found on PATH: install Docker and the NVIDIA Container Toolkit, or use launch/tmux_train.sh in a virtual environment"
fi

cmd=(docker run --rm --init)
# Interactive when started from a terminal (tmux included), so Ctrl-C reaches train.
if [[ -t 0 && -t 1 ]]; then
  cmd+=(-it)
fi
[[ -z "$name" ]] || cmd+=(--name "$name")
cmd+=("${gpu_args[@]}")
# Env workers are processes that pass observations through shared memory; NCCL
# wants unlimited locked memory for multi-GPU collectives.
cmd+=(--shm-size "$shm_size" --ulimit memlock=-1 --ulimit stack=67108864)
[[ "$host_network" == 0 ]] || cmd+=(--network host)
if [[ "$as_root" == 0 ]]; then
  cmd+=(--user "$(id -u):$(id -g)")
fi
cmd+=(-v "$logdir:/logdir")
cmd+=("${egl_args[@]}")
for kv in "${envs[@]}"; do
  cmd+=(-e "$kv")
done
cmd+=("$image" "${container_args[@]}")

# Create the host directory as you: Docker would create a missing one owned by root.
run mkdir -p "$logdir"
run "${cmd[@]}"

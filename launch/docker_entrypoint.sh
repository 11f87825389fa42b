#!/usr/bin/env bash
# Entry point of the dreamer_rodent image (see Dockerfile).
#
#   docker run IMAGE                      -> python -m dreamer_rodent.train
#   docker run IMAGE --task rodent_goto   -> python -m dreamer_rodent.train --task rodent_goto
#   docker run IMAGE python -m dreamer_rodent.eval --checkpoint /logdir/run   -> that command
#
# Arguments that start with '-' (or none) are train flags. Training adds
# `--jax.platform gpu` when a GPU is visible (nvidia-smi lists one) and the
# arguments do not set jax.platform themselves: the config default `auto` would
# fall back to the CPU quietly if the image's CUDA jaxlib could not use the GPU,
# while `gpu` stops with an error that says why.
# Its own arguments are the container's command, so it has no --help or --dry-run
# of its own: `docker run IMAGE --help` shows train's help.
set -euo pipefail

if [[ $# -gt 0 && "$1" != -* ]]; then
  exec "$@"
fi

platform=()
sets_platform=0
for arg in "$@"; do
  case "$arg" in
    --jax.platform | --jax.platform=*) sets_platform=1 ;;
  esac
done
if [[ "$sets_platform" == 0 ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    platform=(--jax.platform gpu)
  else
    echo "docker_entrypoint: no GPU is visible in this container, so training runs on the CPU." \
      "To use GPUs, start it with --gpus (launch/docker_run.sh does) on a host with the NVIDIA Container Toolkit." >&2
  fi
fi
exec python -m dreamer_rodent.train "${platform[@]}" "$@"

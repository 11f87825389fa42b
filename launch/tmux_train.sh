#!/usr/bin/env bash
# Starts a training run in a named tmux session, or re-attaches to it.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tmux_train.sh [options] [-- TRAIN_ARGS...]

Starts `python -m dreamer_rodent.train --logdir LOGDIR TRAIN_ARGS...` in a detached
tmux session, appends its console output to LOGDIR/console.log, and attaches to it.
If the session already exists, it attaches to it instead of starting a second run.

Detach with Ctrl-b d (training goes on); re-attach with the same command or
`tmux attach -t SESSION`. When training ends the window stays open with its exit
status until you press Enter. Running the same command again after that resumes
the run from its last checkpoint (same LOGDIR).

Options:
  -s, --session NAME   tmux session name (default: dreamer); no '.' or ':'
  -l, --logdir DIR     run directory (default: logdir/SESSION), given to train as --logdir
      --python PATH    Python that has dreamer_rodent installed (default: python on PATH)
  -d, --detach         start the session (or find it) without attaching
  -n, --dry-run        print the commands instead of running them
  -h, --help           show this help

The session gets this shell's PATH, VIRTUAL_ENV, LD_LIBRARY_PATH, PYTHONPATH and
MUJOCO_*, CUDA_*, XLA_*, JAX_*, DREAMER_RODENT_* variables, even when a tmux
server with an older environment is already running.

Example:
  launch/tmux_train.sh --session goto1 -- --task rodent_goto --configs size12m --jax.platform gpu
EOF
}

die() {
  echo "tmux_train.sh: $*" >&2
  exit 2
}

# Inside the session: run the command, append its output to the log, keep the
# window open with the exit status. (Internal; tmux_train.sh calls itself so.)
if [[ "${1:-}" == "--in-session" ]]; then
  [[ $# -ge 4 && "$3" == "--" ]] || die "--in-session is internal: --in-session LOGFILE -- COMMAND..."
  log="$2"
  shift 3
  {
    printf '[tmux_train] %s start:' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf ' %q' "$@"
    printf '\n'
  } >>"$log"
  set +e
  "$@" 2>&1 | tee -a "$log"
  status="${PIPESTATUS[0]}"
  set -e
  printf '[tmux_train] %s training exited with status %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$status" | tee -a "$log"
  printf 'Output is in %s. Press Enter to close this window.\n' "$log"
  read -r _ || true
  exit "$status"
fi

# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

session=dreamer
logdir=""
python=""
detach=0
train_args=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    -n | --dry-run) dry_run=1; shift ;;
    -s | --session) need_value "$@"; session="$2"; shift 2 ;;
    -l | --logdir) need_value "$@"; logdir="$2"; shift 2 ;;
    --python) need_value "$@"; python="$2"; shift 2 ;;
    -d | --detach) detach=1; shift ;;
    --) shift; train_args=("$@"); break ;;
    *) die "unknown option '$1'. Options come before '--'; train flags after it: launch/tmux_train.sh [options] -- --task rodent_goto (see --help)" ;;
  esac
done

[[ "$session" != *[.:]* ]] || die "bad session name '$session': tmux does not allow '.' or ':' in it; pick another --session"
for arg in "${train_args[@]}"; do
  case "$arg" in
    --logdir | --logdir=*) die "give the run directory as tmux_train.sh --logdir DIR (before '--'), not as a train flag: console.log goes there too" ;;
  esac
done
[[ -n "$logdir" ]] || logdir="logdir/$session"
[[ "$logdir" == /* ]] || logdir="$PWD/$logdir"

if [[ -z "$python" ]]; then
  python="$(command -v python || command -v python3 || true)"
  [[ -n "$python" ]] || die "no python on PATH: activate the environment where dreamer_rodent is installed (source /path/to/venv/bin/activate) or pass --python PATH"
fi
if [[ "$python" == */* ]]; then
  [[ -x "$python" ]] || die "--python '$python' is not an executable file"
  [[ "$python" == /* ]] || python="$PWD/$python"
else
  resolved="$(command -v "$python" || true)"
  [[ -n "$resolved" ]] || die "--python '$python' is not on PATH"
  python="$resolved"
fi

if ! command -v tmux >/dev/null 2>&1; then
  [[ "$dry_run" == 1 ]] || die "tmux not found on PATH: install it (apt-get install tmux) or run python -m dreamer_rodent.train directly"
  echo "tmux_train.sh: tmux not found; showing the commands for a new session" >&2
  exists=0
elif tmux has-session -t "=$session" 2>/dev/null; then
  exists=1
else
  exists=0
fi

if [[ -n "${TMUX:-}" ]]; then
  attach=(tmux switch-client -t "=$session")
else
  attach=(tmux attach-session -t "=$session")
fi
attach_now() {
  if [[ "$detach" == 1 ]]; then
    echo "tmux_train.sh: attach with: tmux attach -t $session" >&2
  elif [[ "$dry_run" == 0 && ! -t 0 ]]; then
    echo "tmux_train.sh: not a terminal, so not attaching; attach with: tmux attach -t $session" >&2
  else
    run "${attach[@]}"
  fi
}

if [[ "$exists" == 1 ]]; then
  echo "tmux_train.sh: session '$session' is already running; attaching to it instead of starting a second run" \
    "(its own arguments stand; to start another run pick another --session)" >&2
  attach_now
  exit 0
fi

env_args=()
while IFS= read -r var; do
  case "$var" in
    PATH | VIRTUAL_ENV | LD_LIBRARY_PATH | PYTHONPATH | MUJOCO_* | CUDA_* | XLA_* | JAX_* | DREAMER_RODENT_*)
      env_args+=(-e "$var=${!var}") ;;
  esac
done < <(compgen -e | LC_ALL=C sort)

self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

run mkdir -p "$logdir"
run tmux new-session -d -s "$session" -c "$PWD" "${env_args[@]}" \
  bash "$self" --in-session "$logdir/console.log" -- \
  "$python" -m dreamer_rodent.train --logdir "$logdir" "${train_args[@]}"
[[ "$dry_run" == 1 ]] || echo "tmux_train.sh: started session '$session'; console output also goes to $logdir/console.log" >&2
attach_now

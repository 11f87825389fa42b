# Shared by the launch scripts that run from this directory (sourced, not run).
# The SLURM script keeps its own copy: sbatch runs a spooled copy of it, from
# where this file cannot be found.
# shellcheck shell=bash

# Runs a command, or with dry_run=1 prints it shell-quoted on one line.
dry_run=0
run() {
  if [[ "$dry_run" == 1 ]]; then
    local line
    printf -v line '%q ' "$@"
    printf '%s\n' "${line% }"
  else
    "$@"
  fi
}

# need_value OPTION "$@-after-it": fails (through the script's die) when the option has no value.
need_value() {
  [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see --help)"
}

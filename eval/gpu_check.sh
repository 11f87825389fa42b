#!/usr/bin/env bash
# One GPU check in under 8 minutes, for a machine lent for a short while:
#   1. the devices (nvidia-smi, what JAX sees);
#   2. the train step at size12m and size50m in bf16 with a 64x64 image: replayed steps/s, compile time,
#      peak RSS, FLOPs per update (XLA cost analysis) and model FLOPs utilisation against the chip's peak;
#   3. EGL rendering: rodent_goto env steps/s with the egocentric camera;
#   4. a short rodent_goto run with the defaults (camera on) through eval/learn.py: its curve and level;
#   5. with several GPUs, end-to-end training on 1 against all of them.
# Everything goes to OUT (default gpu_check_<time>/), with summary.md gathering the tables.
#
#   eval/gpu_check.sh [--cpu] [OUT]
#
# --cpu is the dry check (the test suite runs it): the same steps on the CPU with the debug preset,
# ball_goto for the training steps and seconds-long budgets, 1 against 2 forced host devices for step 5. PEAK_TFLOPS overrides the chip's
# bf16 dense peak (known: H100 SXM/H200 989, H100 PCIe 756, A100 312, L40S 362); RUN_MINUTES the run's length
# (default 5; lower it where one command may run less than 8 minutes). A step that fails is noted in the
# summary and the script goes on to the next, so one broken step does not cost the others.
set -euo pipefail

cpu=0
if [[ "${1:-}" == "--cpu" ]]; then cpu=1; shift; fi
if [[ "${1:-}" == -* ]]; then
  echo "error: unknown option $1; usage: eval/gpu_check.sh [--cpu] [OUT]" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-gpu_check_$(date +%Y%m%d_%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python}
cd "$here"
summary="$out/summary.md"
started=$(date +%s)
section() { printf '\n## %s\n\n' "$1" | tee -a "$summary"; }
failed() { echo "FAILED (exit $1): see $2" | tee -a "$summary"; status=1; }
status=0
elapsed() { echo $(( $(date +%s) - started )); }

echo "# GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" > "$summary"

section "Devices"
if [[ $cpu == 0 ]] && command -v nvidia-smi > /dev/null; then
  nvidia-smi -L | tee -a "$summary"
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)  # physical GPUs (-L also lists MIG slices)
else
  gpu_name="cpu"
  gpus=1
fi
"$py" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tail -1 | tee -a "$summary"

if [[ -z "${PEAK_TFLOPS:-}" ]]; then
  case "$gpu_name" in
    *"H100 PCIe"*) PEAK_TFLOPS=756 ;;
    *H100*|*H200*) PEAK_TFLOPS=989 ;;
    *A100*) PEAK_TFLOPS=312 ;;
    *L40S*) PEAK_TFLOPS=362 ;;
    *) PEAK_TFLOPS=0 ;;
  esac
fi

if [[ $cpu == 1 ]]; then
  rows=(debug:bfloat16:image)
  seconds=1
  platform=cpu
  run_task=ball_goto
  run_minutes=${RUN_MINUTES:-2}
  run_steps=60  # the dry run ends on env steps (two 0.5 s episodes after a 32-step prefill), not on the clock
  run_flags=(-- --configs debug --run.prefill 32 --run.envs 1 --run.env_parallel none --jax.platform cpu
             --env.time_limit 0.5)
  bench_train=(--presets debug --warmup 48 --steps 32 --envs 1 --prefill 32 -- --run.env_parallel none)
else
  rows=(size12m:bfloat16:image size50m:bfloat16:image)
  seconds=10
  platform=gpu
  run_task=rodent_goto
  run_minutes=${RUN_MINUTES:-5}
  run_steps=100000000
  run_flags=()
  bench_train=(--presets size12m --warmup 512 --steps 1024 --envs 8 --prefill 256 -- --jax.compute_dtype bfloat16)
fi

section "Train step (eval/bench_agent.py; peak ${PEAK_TFLOPS} TFLOP/s for MFU)"
"$py" eval/bench_agent.py --rows "${rows[@]}" --seconds "$seconds" --flops --peak-tflops "$PEAK_TFLOPS" \
  --isolate --platform "$platform" --no-counts --json "$out/train_step.json" > "$out/train_step.log" 2>&1 \
  || failed $? "$out/train_step.log"
sed -n '/^| preset/,$p' "$out/train_step.log" | tee -a "$summary"

section "EGL rendering (eval/bench_env.py, rodent_goto, 64x64 egocentric camera)"
MUJOCO_GL=egl "$py" eval/bench_env.py --tasks rodent_goto --workers 1 --seconds "$seconds" --no-stock \
  --no-transport-row > "$out/render.log" 2>&1 || failed $? "$out/render.log"
{ grep '^|' "$out/render.log" || true; } | tee -a "$summary"

section "$run_task with the defaults for ${run_minutes} min (eval/learn.py)"
"$py" eval/learn.py --task "$run_task" --steps "$run_steps" --minutes "$run_minutes" --seeds 0 --out "$out/run" \
  --baseline-episodes 0 "${run_flags[@]}" > "$out/run.log" 2>&1 || failed $? "$out/run.log"
tail -5 "$out/run.log" | tee -a "$summary"
"$py" - "$out/run/seed0" <<'EOF' | tee -a "$summary"
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
last = {k: v for line in lines for k, v in line.items()}
keys = ["step", "fps/policy", "fps/train", "train/loss/total", "curriculum/level", "episode/targets_per_min"]
print("last logged: " + ", ".join(f"{k} {last[k]:.4g}" for k in keys if isinstance(last.get(k), (int, float))))
episodes = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()] if (run / "episodes.jsonl").exists() else []
print(f"episodes: {len(episodes)}; env steps {episodes[-1]['env_steps'] if episodes else 0}")
EOF

if [[ $cpu == 1 || $gpus -gt 1 ]]; then
  section "End-to-end training, 1 device against all (eval/bench_train.py)"
  for which in one all; do
    if [[ $cpu == 1 && $which == one ]]; then prefix=(env "XLA_FLAGS=--xla_force_host_platform_device_count=1")
    elif [[ $cpu == 1 ]]; then prefix=(env "XLA_FLAGS=--xla_force_host_platform_device_count=2")
    elif [[ $which == one ]]; then prefix=(env CUDA_VISIBLE_DEVICES=0)
    else prefix=(env)
    fi
    echo "devices: $which" | tee -a "$summary"
    "${prefix[@]}" "$py" eval/bench_train.py --task "$run_task" "${bench_train[@]}" > "$out/bench_train_$which.log" \
      2>&1 || failed $? "$out/bench_train_$which.log"
    { grep -E '^(\||device)' "$out/bench_train_$which.log" || true; } | tee -a "$summary"
  done
fi

printf '\nTotal: %s s\n' "$(elapsed)" | tee -a "$summary"
exit "$status"

"""eval/gpu_check.sh --cpu: the GPU session's one script runs end to end here, so a lent GPU is not wasted on a typo
(shellcheck: tests/test_launch.py)."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "eval" / "gpu_check.sh"


def test_cpu_dry_run_fills_every_section(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run([str(SCRIPT), "--cpu", str(tmp_path / "check")], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "check" / "summary.md").read_text()
    # The train step row with its FLOPs (XLA cost analysis), TFLOP/s and peak RSS filled in.
    row = next(line for line in summary.splitlines() if line.startswith("| debug | bfloat16 | image"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    gflops, tflops, rss = float(cells[11]), float(cells[12]), float(cells[14])
    assert gflops > 0 and tflops > 0 and 0.1 < rss < 24
    assert re.search(r"\| rodent_goto \| adapter \(Env\) \| yes \| 1 \| [\d.]+", summary)  # rendering with the camera
    episodes = int(re.search(r"episodes: (\d+)", summary).group(1))
    assert episodes >= 1  # the short run trained and logged episodes
    assert "devices: one" in summary and "devices: all" in summary
    assert len(re.findall(r"^\| debug \| [\d,]+ \| 1 \| 4x16 ", summary, flags=re.M)) == 2  # 1 and 2 devices
    assert re.search(r"Total: \d+ s", summary)


def test_unknown_option_is_refused():
    proc = subprocess.run([str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown option --gpu")

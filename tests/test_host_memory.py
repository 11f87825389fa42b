"""The commands' huge-page setting for the C allocator (dreamer_rodent/host_memory.py)."""

import os
import subprocess
import sys

import pytest

from dreamer_rodent import host_memory as hm


def test_environment_to_execute_again_with():
    env = hm.hugepage_environ({"PATH": "/bin"}, "madvise")
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and env["PATH"] == "/bin"
    assert hm.hugepage_environ(env, "madvise") is None  # the executed-again process goes on
    # Other tunables are kept; a hugetlb value the user chose is left alone.
    kept = hm.hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "always")
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hm.hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "always") is None
    assert hm.hugepage_environ({"DREAMER_RODENT_HUGEPAGES": "0"}, "always") is None
    assert hm.hugepage_environ({}, "never") is None and hm.hugepage_environ({}, "") is None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert hm.thp_mode(str(path)) == "madvise"
    assert hm.thp_mode(str(tmp_path / "missing")) == ""


needs_huge_pages = pytest.mark.skipif(not hm.available(), reason="needs Linux, glibc and transparent huge pages")


def _environ_without_the_setting(*also):
    """This process's environment with the setting and its markers removed (the suite's conftest turns it off)."""
    drop = ("GLIBC_TUNABLES", hm.OPT_OUT, hm._DONE, *also)
    return {k: v for k, v in os.environ.items() if k not in drop}


SCRIPT = ("import os; from dreamer_rodent.host_memory import use_huge_pages; use_huge_pages(); "
          "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'))")


@needs_huge_pages
def test_a_command_runs_again_in_the_same_process_with_the_setting_and_can_be_turned_off():
    env = _environ_without_the_setting()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    pid, tunables = out.split()
    assert int(pid) == proc.pid  # the same process (a launcher's signals still reach it), its program replaced
    assert tunables == "glibc.malloc.hugetlb=1"
    off = subprocess.run([sys.executable, "-c", SCRIPT], env={**env, hm.OPT_OUT: "0"}, capture_output=True,
                         text=True, timeout=60)
    assert off.stdout.split()[1] == "None"


@needs_huge_pages
def test_the_training_command_runs_to_its_end_with_the_setting(tmp_path):
    env = _environ_without_the_setting("XLA_FLAGS")
    result = subprocess.run([sys.executable, "-m", "dreamer_rodent.train", "--task", "ball_goto", "--configs", "debug",
                             "--env.time_limit", "1.0", "--run.progress", "false", "--run.steps", "200",
                             "--logdir", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints").is_dir()

"""Host memory: transparent huge pages for the C allocator, which must be chosen before a process starts.

XLA on a CPU allocates each update's temporary buffers afresh. glibc's malloc
serves a block over its mmap threshold (at most 32 MiB) with a fresh mapping and
unmaps it when freed, so the next update touches the same amount of new memory
again, one 4 KiB page fault at a time: 85,000 faults and 0.18 s of kernel time
per size1m update on the 2-core CPU of eval/RESULTS.md, and a cliff where a
model's scratch buffer grows past 32 MiB. glibc's tunable `glibc.malloc.hugetlb=1`
asks for transparent huge pages (2 MiB) on those mappings: a few hundred faults
per update. A tunable is read only when a process starts, so the commands
(`train`, `eval`, the benchmarks) execute themselves again, once, with it set;
env worker processes inherit it. `DREAMER_RODENT_HUGEPAGES=0` turns this off;
nothing happens off Linux or glibc, when the kernel's transparent huge pages are
`never`, or when GLIBC_TUNABLES already names the setting.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping

OPT_OUT = "DREAMER_RODENT_HUGEPAGES"  # "0": leave the allocator alone
_DONE = "DREAMER_RODENT_REEXECUTED"  # set in the re-executed process: never loop
TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_SETTING) -> str:
    """The kernel's transparent huge page mode (always, madvise or never), '' when it cannot be read."""
    try:
        text = open(path).read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else ""


def hugepage_environ(environ: Mapping[str, str], mode: str) -> dict[str, str] | None:
    """The environment to execute again with, or None when the process should go on as it is."""
    if environ.get(OPT_OUT, "1") == "0" or environ.get(_DONE) or mode not in ("always", "madvise"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None  # the user chose a value
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    env[_DONE] = "1"
    return env


def available(mode: str | None = None) -> bool:
    """Whether the setting can apply here: Linux with glibc, and the kernel's transparent huge pages (`mode`, read
    from the kernel when not given) not `never`."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    return (thp_mode() if mode is None else mode) in ("always", "madvise")


def use_huge_pages() -> None:
    """Executes this same command again with `glibc.malloc.hugetlb=1` where that applies (see the module
    docstring); returns without doing anything otherwise, or when the execution fails. Call it first thing
    under `if __name__ == "__main__":`, never from library code (it replaces the running process)."""
    mode = thp_mode()
    env = hugepage_environ(os.environ, mode) if available(mode) else None
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, list(sys.orig_argv), env)
    except OSError:
        return

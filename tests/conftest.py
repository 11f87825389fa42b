"""Fault injection shared by the tests, and the environment every test process starts from."""

import os

# The commands' huge-page allocator setting (dreamer_rodent/host_memory.py) is for long runs: tests run many
# short command processes and keep it off, except tests/test_host_memory.py, which turns it on where it checks it.
os.environ.setdefault("DREAMER_RODENT_HUGEPAGES", "0")


class FullDisk:
    """Files opened for writing by the patched modules fail with ENOSPC once `budget` bytes were written."""

    def __init__(self, budget):
        self.budget = budget

    def open(self, path, mode="r", *args, **kwargs):
        real = open(path, mode, *args, **kwargs)
        if not any(m in mode for m in "wax+"):
            return real
        disk = self

        class Limited:
            def __init__(self):
                self._f = real

            def write(self, data):
                disk.budget -= len(data)
                if disk.budget < 0:
                    raise OSError(28, "No space left on device", str(path))
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

        return Limited()

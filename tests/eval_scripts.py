"""Imports a script of eval/ (not a package) as a module, for the tests of its functions."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_script(path: str, name: str | None = None):
    """`path` relative to the repository root, e.g. 'eval/learn.py'."""
    path = ROOT / path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

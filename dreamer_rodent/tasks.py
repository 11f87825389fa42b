"""List the registered tasks, or show what the agent sees in one.

    python -m dreamer_rodent.tasks
    python -m dreamer_rodent.tasks --show rodent_goto --out frame.png [--size 64] [--steps 0] [--camera NAME]

`--show` saves the egocentric image (upscaled, nearest neighbour, so the pixels
stay visible) beside a third-person view of the same moment.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def table() -> str:
    """The rodent tasks, then the benchmark tasks (dm_control suite) in a section of their own, then one line per
    task file that failed to load."""
    from tasks import registry

    entries = registry.entries()
    width = max([len("name")] + [len(n) for n in entries])
    wwidth = max([len("walker")] + [len(e.walker) for e in entries.values()])

    def rows(benchmark: bool) -> list[str]:
        return [f"{e.name:<{width}}  {e.walker:<{wwidth}}  {e.description}"
                for e in entries.values() if e.benchmark == benchmark]

    lines = [f"{'name':<{width}}  {'walker':<{wwidth}}  description"] + rows(False)
    benchmarks = rows(True)
    if benchmarks:
        lines += ["", "benchmark tasks (dm_control suite, to compare with published DreamerV3 scores):",
                  f"{'name':<{width}}  {'domain':<{wwidth}}  description"] + benchmarks
    problems = registry.problems()
    if problems:
        lines += ["", "task files with problems (their tasks are not listed above):"] + [f"  {p}" for p in problems]
    return "\n".join(lines)


def show(task: str, out: str, size: int = 64, steps: int = 0, camera: str | None = None, height: int = 384,
         seed: int = 0) -> np.ndarray:
    """Renders the agent's image and a third-person view side by side into `out`."""
    from PIL import Image

    from dreamer_rodent.config import build_config
    from dreamer_rodent.env import make_env

    config = build_config(flags={"task": task, "env.image_size": size, "env.keys": ["image"], "seed": seed})
    env = make_env(config)
    try:
        obs = env.step({"reset": True})
        act_space = env.act_space["action"]
        for _ in range(steps):  # zero actions: the walker settles in its own pose
            obs = env.step({"action": np.zeros(act_space.shape, np.float32), "reset": False})
        ego = Image.fromarray(obs["image"]).resize((height, height), Image.NEAREST)
        third = env.render(camera, width=height * 4 // 3, height=height)
    finally:
        env.close()
    frame = np.concatenate([np.asarray(ego), third], axis=1)
    Image.fromarray(frame).save(out)
    return frame


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dreamer_rodent.tasks", description=__doc__.splitlines()[0])
    parser.add_argument("--show", metavar="TASK", help="render the agent's view of TASK")
    parser.add_argument("--out", default="frame.png", help="PNG path for --show (default frame.png)")
    parser.add_argument("--size", type=int, default=64, help="egocentric image size in pixels (default 64)")
    parser.add_argument("--steps", type=int, default=0, help="zero-action steps before the snapshot")
    parser.add_argument("--camera", default=None, help="third-person camera name (default: one tracking the walker)")
    parser.add_argument("--task_module", default="", metavar="MODULE",
                        help="also load the tasks of this module path or .py file (as train's --task_module)")
    args = parser.parse_args(argv)
    from dreamer_rodent.config import ConfigError
    from dreamer_rodent.gl_backend import GLBackendError, check

    try:
        check()  # the task files import dm_control, which loads the backend
        from tasks import registry
        from tasks.registry import TaskConfigError, UnknownTaskError
    except GLBackendError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    try:
        registry.load_module(args.task_module)
        if args.show:
            show(args.show, args.out, size=args.size, steps=args.steps, camera=args.camera)
            print(f"saved {args.out}: left the {args.size}x{args.size} egocentric image (upscaled), right a "
                  "third-person view")
        else:
            print(table())
    except (UnknownTaskError, TaskConfigError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

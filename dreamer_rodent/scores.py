"""The numbers of an evaluation: spread over episodes, the summary, the printed table, strict JSON."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from dreamer_rodent.rollout import Episode


def spread(values: Sequence[float]) -> dict:
    values = np.asarray(list(values), np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def summarize(episodes: Sequence[Episode]) -> dict:
    """Mean and spread of return and length, success rate, and the per-episode list."""
    if not episodes:
        raise ValueError("no episodes were evaluated.")
    successes = [e.success for e in episodes if e.success is not None]
    distances = [e.final_distance for e in episodes if e.final_distance is not None]
    rates = [e.targets_per_min for e in episodes if e.targets_per_min is not None]
    firsts = [e.first_reach_s for e in episodes if e.first_reach_s is not None]
    scores = {"episodes": len(episodes), "return": spread([e.ret for e in episodes]),
              "length": spread([e.length for e in episodes])}
    # Only the measures the task has: a suite task gets no success, distance or reach fields at all.
    if successes:
        scores["success_rate"] = float(np.mean(successes))
    if distances:
        scores["final_distance"] = spread(distances)
    if rates:
        scores["targets_per_min"] = spread(rates)
        # Over the episodes that reached a target (success_rate says how many did); None if none did.
        scores["first_reach_s"] = spread(firsts) if firsts else None
    # Every `log/` metric of the task: the spread over episodes of each episode's mean.
    names = sorted({name for e in episodes for name, values in e.metrics.items() if values})
    scores["metrics"] = {name: spread([np.mean(e.metrics[name]) for e in episodes if e.metrics.get(name)])
                         for name in names}
    scores["per_episode"] = [e.scores() for e in episodes]
    return scores


def strict_json(value):
    """`value` with every NaN or infinite float replaced by None: the scores file is strict JSON (no NaN)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def format_table(scores: dict) -> str:
    """The per-episode table and the summary lines printed after evaluation (columns the task has)."""
    def show(value, fmt="{}"):
        return "-" if value is None else fmt.format(value)

    columns = [("episode", "episode", 7, "{}"), ("return", "return", 10, "{:.3f}"), ("length", "length", 6, "{}")]
    optional = [("success", "success", 7, None), ("targets_reached", "targets", 7, "{}"),
                ("targets_per_min", "per min", 7, "{:.2f}"), ("first_reach_s", "1st at s", 8, "{:.2f}"),
                ("final_distance", "final dist", 10, "{:.3f}"), ("level", "level", 5, "{}")]
    columns += [c for c in optional if any(c[0] in e for e in scores["per_episode"])]
    header = "  ".join(f"{title:>{width}}" for _, title, width, _ in columns)
    rows = [header, "-" * len(header)]
    for e in scores["per_episode"]:
        cells = []
        for key, _, width, fmt in columns:
            value = e.get(key)
            text = ("yes" if value else "no") if key == "success" and value is not None else show(value, fmt or "{}")
            cells.append(f"{text:>{width}}")
        rows.append("  ".join(cells))
    rows.append("-" * len(header))
    for name in ("return", "length", "final_distance", "targets_per_min", "first_reach_s"):
        s = scores.get(name)
        if s:
            rows.append(f"{name:<15} mean {s['mean']:.3f}  std {s['std']:.3f}  min {s['min']:.3f}  max {s['max']:.3f}")
    if "success_rate" in scores:
        rows.append(f"{'success_rate':<15} {scores['success_rate']:.3f}")
    shown = {"success", "distance", "targets_per_min", "first_reach_s"}
    for name, s in scores.get("metrics", {}).items():
        if name not in shown:
            rows.append(f"log/{name:<11} mean {s['mean']:.4g}  std {s['std']:.4g}  min {s['min']:.4g}  "
                        f"max {s['max']:.4g}")
    return "\n".join(rows)

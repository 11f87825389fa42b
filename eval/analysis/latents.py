"""Linear probes of an agent's latents: what each part of the network encodes about the body and the task.

    python -m dreamer_rodent.eval --checkpoint RUN --episodes 20 --level 0 --record --record-control
    python eval/analysis/latents.py RUN/eval/<name>.nwb [--out DIR] [--control OTHER.nwb]

The first analysis a neuroscientist runs on a recording (cf. Aldarondo et al.
2024): for each group of units (the RSSM's deterministic state `deter`, its
stochastic latent `stoch` (its posterior probabilities), each encoder branch's embedding) a ridge regression
predicts a behavioural variable, and its R^2 on held-out episodes says how much
of that variable the group carries linearly:

- `head_speed`: horizontal speed of the head (m/s), from its recorded positions;
- `heading_to_target`: the angle between the torso's heading and the direction
  from the head to the target, as (cos, sin) (go-to tasks);
- `joint_angles`: every hinge joint's angle (R^2 weighted by each joint's variance).

Cross-validation is by episode (folds of whole episodes, so that neighbouring,
nearly identical steps never sit on both sides), the ridge strength is chosen
inside each training fold, and inputs and targets are standardised on the
training fold. The same probes are fitted on the untrained control agent's
latents (`processing/agent_untrained`, from `--record-control`, or `--control
FILE`): a probe says something about learning only where it beats that control.
Writes OUT/probes.csv, OUT/probes.md and OUT/probes.png (default OUT: the
recording's stem + `_probes`).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np

ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)  # the largest: nearly the mean alone
FOLDS = 5
GROUPS = ("deter", "stoch", "embed_image", "embed_vestibular", "embed_proprio", "embed_task")


def load(path: pathlib.Path, module: str = "agent") -> dict:
    """Latent groups of `module`, behavioural targets and episode ids from a recording."""
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        if module not in nwb.processing:
            return {}
        agent = nwb.processing[module]
        behavior = nwb.processing["behavior"]
        times = np.asarray(agent["deter"].timestamps[:])
        epochs = nwb.epochs.to_dataframe()
        episode = np.full(len(times), -1)
        for i, (start, stop) in enumerate(zip(epochs["start_time"], epochs["stop_time"])):
            episode[(times >= start - 1e-9) & (times <= stop + 1e-9)] = i
        groups = {}
        for name in GROUPS:
            source = "stoch_probs" if name == "stoch" else name  # the posterior's probabilities: more than a sample
            if source in agent.data_interfaces:
                data = np.asarray(agent[source].data[:], np.float64)
                groups[name] = data.reshape(len(data), -1)
        targets = behaviour_targets(behavior, times, episode)
    return {"groups": groups, "targets": targets, "episode": episode, "times": times}


def _yaw(quat: np.ndarray) -> np.ndarray:
    """Heading (rotation about world z) of (w, x, y, z) quaternions: where the body's x axis points."""
    w, x, y, z = quat.T
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def behaviour_targets(behavior, times: np.ndarray, episode: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    names = set(behavior.data_interfaces)
    positions = behavior["position"].spatial_series if "position" in names else {}
    if "head_position" in positions:
        head = np.asarray(positions["head_position"].data[:], np.float64)
        speed = np.full(len(times), np.nan)
        step = np.diff(times)
        same = (episode[1:] == episode[:-1]) & (step > 0)
        moved = np.linalg.norm(np.diff(head[:, :2], axis=0), axis=1)
        speed[1:][same] = moved[same] / step[same]
        out["head_speed"] = speed[:, None]
        if "target_position" in positions and "torso_orientation" in names:
            target = np.asarray(positions["target_position"].data[:], np.float64)
            yaw = _yaw(np.asarray(behavior["torso_orientation"].data[:], np.float64))
            bearing = np.arctan2(target[:, 1] - head[:, 1], target[:, 0] - head[:, 0])
            angle = bearing - yaw
            out["heading_to_target"] = np.stack([np.cos(angle), np.sin(angle)], 1)
    if "joint_angle" in names:
        series = behavior["joint_angle"]
        columns = json.loads(series.comments).get("columns") or []
        angles = np.asarray(series.data[:], np.float64)
        keep = [i for i, c in enumerate(columns) if "root" not in c.split("/")[-1]]  # hinge joints, not the root
        if keep:
            out["joint_angles"] = angles[:, keep]
    return out


def _standardise(train: np.ndarray, test: np.ndarray):
    """Zero mean, unit variance on the training fold; a unit (nearly) constant there is left out (set to 0),
    since scaling it up would turn its held-out noise into huge inputs."""
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-4, std, np.inf)
    return (train - mean) / std, (test - mean) / std


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Closed-form ridge with an unpenalised intercept (inputs and targets are centred)."""
    gram = x.T @ x + alpha * np.eye(x.shape[1])
    return np.linalg.solve(gram, x.T @ y)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Variance-weighted R^2 over the target's columns."""
    total = np.sum((y - y.mean(0)) ** 2)
    return float(1.0 - np.sum((y - pred) ** 2) / total) if total > 0 else float("nan")


def _folds(episodes: np.ndarray, k: int) -> list[np.ndarray]:
    ids = np.unique(episodes)
    return [ids[i::k] for i in range(min(k, len(ids)))]


def probe(x: np.ndarray, y: np.ndarray, episodes: np.ndarray, folds: int = FOLDS) -> float:
    """Held-out R^2 of a ridge probe, cross-validated over whole episodes, alpha chosen within each training fold."""
    valid = np.all(np.isfinite(y), 1) & (episodes >= 0)
    x, y, episodes = x[valid], y[valid], episodes[valid]
    outer = _folds(episodes, folds)
    if len(outer) < 2:
        raise ValueError("probes need at least 2 recorded episodes (cross-validation is over episodes).")
    truth, preds = [], []
    for held in outer:
        test = np.isin(episodes, held)
        xtr, ytr, etr = x[~test], y[~test], episodes[~test]
        inner = _folds(etr, 3)
        best, best_alpha = -np.inf, ALPHAS[-1]  # one training episode: no inner folds, the strongest penalty
        for alpha in ALPHAS if len(inner) >= 2 else ():
            scores = []
            for val_ids in inner:
                val = np.isin(etr, val_ids)
                a, b = _standardise(xtr[~val], xtr[val])
                ya, yb = _standardise(ytr[~val], ytr[val])
                scores.append(_r2(yb, b @ _ridge(a, ya, alpha)))
            score = np.nanmean(scores)
            if score > best:
                best, best_alpha = score, alpha
        a, b = _standardise(xtr, x[test])
        mean, std = ytr.mean(0), np.where(ytr.std(0) > 1e-8, ytr.std(0), 1.0)
        preds.append(b @ _ridge(a, (ytr - mean) / std, best_alpha) * std + mean)
        truth.append(y[test])
    return _r2(np.concatenate(truth), np.concatenate(preds))


def analyse(recording: dict, control: dict | None) -> list[dict]:
    rows = []
    for target, y in recording["targets"].items():
        for group, x in recording["groups"].items():
            row = {"group": group, "target": target, "units": x.shape[1], "samples": int(np.sum(np.all(np.isfinite(y), 1))),
                   "r2": probe(x, y, recording["episode"])}
            if control and group in control["groups"] and target in control["targets"]:
                row["r2_untrained"] = probe(control["groups"][group], control["targets"][target], control["episode"])
            rows.append(row)
    return rows


def write_table(rows: list[dict], out: pathlib.Path, source: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    fields = ["target", "group", "units", "samples", "r2", "r2_untrained"]
    with open(out / "probes.csv", "w") as f:
        f.write(",".join(fields) + "\n")
        for r in rows:
            f.write(",".join("" if r.get(k) is None else f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])
                             for k in fields) + "\n")
    lines = [f"Held-out R^2 of ridge probes ({source}); cross-validated over episodes.", "",
             "| target | group | units | R^2 trained | R^2 untrained | trained beats untrained |", "|---|---|---|---|---|---|"]
    for r in rows:
        control = r.get("r2_untrained")
        beats = "" if control is None else ("yes" if r["r2"] > control else "no")
        lines.append(f"| {r['target']} | {r['group']} | {r['units']} | {r['r2']:.3f} | "
                     f"{'' if control is None else f'{control:.3f}'} | {beats} |")
    text = "\n".join(lines) + "\n"
    (out / "probes.md").write_text(text)
    return text


def plot(rows: list[dict], path: pathlib.Path, title: str) -> None:
    """One panel per target: a bar per latent group, trained (dark) beside untrained (light)."""
    from PIL import Image, ImageDraw, ImageFont

    targets = list(dict.fromkeys(r["target"] for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    panel_w, panel_h, margin = 60 + 44 * len(groups), 260, 40
    image = Image.new("RGB", (margin + panel_w * len(targets), panel_h + 110), "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 12)
    except OSError:
        font = ImageFont.load_default()
    draw.text((10, 8), title, fill="black", font=font)
    top, bottom = 40, 40 + panel_h - 40
    for t, target in enumerate(targets):
        x0 = margin + t * panel_w
        draw.text((x0 + 10, top - 16), target, fill="black", font=font)
        for value in (0.0, 0.5, 1.0):
            y = bottom - value * (bottom - top)
            draw.line((x0, y, x0 + panel_w - 20, y), fill=(220, 220, 220))
            draw.text((x0 - 28, y - 6), f"{value:.1f}", fill="black", font=font)
        for g, group in enumerate(groups):
            row = next((r for r in rows if r["target"] == target and r["group"] == group), None)
            if row is None:
                continue
            bx = x0 + 10 + g * 44
            for offset, value, color in ((0, row["r2"], (40, 90, 160)), (18, row.get("r2_untrained"), (170, 190, 220))):
                if value is None or not math.isfinite(value):
                    continue
                height = max(0.0, min(1.0, value)) * (bottom - top)
                draw.rectangle((bx + offset, bottom - height, bx + offset + 16, bottom), fill=color)
            label = group.replace("embed_", "")
            draw.text((bx, bottom + 6 + (g % 2) * 14), label, fill="black", font=font)
    draw.rectangle((margin, panel_h + 70, margin + 14, panel_h + 84), fill=(40, 90, 160))
    draw.text((margin + 20, panel_h + 70), "trained", fill="black", font=font)
    draw.rectangle((margin + 90, panel_h + 70, margin + 104, panel_h + 84), fill=(170, 190, 220))
    draw.text((margin + 110, panel_h + 70), "untrained (same architecture, same inputs)", fill="black", font=font)
    image.save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", help="an NWB file from python -m dreamer_rodent.eval --record")
    parser.add_argument("--control", default=None, help="the untrained agent's recording, if not in the same file")
    parser.add_argument("--out", default=None, help="output directory (default: <recording stem>_probes)")
    args = parser.parse_args(argv)
    path = pathlib.Path(args.recording)
    if not path.exists():
        print(f"error: {path} does not exist: record one with python -m dreamer_rodent.eval --checkpoint RUN "
              f"--record --record-control.", file=sys.stderr)
        return 2
    try:
        import pynwb  # noqa: F401
    except ImportError:
        print("error: reading NWB needs pynwb: pip install -e '.[nwb]'.", file=sys.stderr)
        return 2
    try:
        recording = load(path)
        control = load(pathlib.Path(args.control), "agent") if args.control else load(path, "agent_untrained") or None
    except (OSError, KeyError) as error:  # not an NWB file, a missing --control, a recording without an agent
        print(f"error: cannot read the recording ({type(error).__name__}: {error}); give NWB files written by "
              f"python -m dreamer_rodent.eval --record.", file=sys.stderr)
        return 2
    if not recording:
        print(f"error: {path} has no processing/agent: record it with python -m dreamer_rodent.eval --record.",
              file=sys.stderr)
        return 2
    if not recording["targets"]:
        print(f"error: {path} has no head position or joint angles to probe (a task without a walker?).",
              file=sys.stderr)
        return 2
    try:
        rows = analyse(recording, control)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out) if args.out else path.with_name(path.stem + "_probes")
    source = f"{path.name}, {len(np.unique(recording['episode'][recording['episode'] >= 0]))} episodes"
    print(write_table(rows, out, source), end="")
    plot(rows, out / "probes.png", f"Linear probes, held-out R^2: {path.name}")
    print(f"Wrote {out / 'probes.csv'}, {out / 'probes.md'}, {out / 'probes.png'}")
    if control is None:
        print("note: no untrained control in this file: record with --record-control (or pass --control FILE) so "
              "that the probes have a baseline.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Learning curves to the bar (issue 27): object recovered and probe accuracies against steps, from TensorBoard.

    .venv/bin/python experiments/screen/learning_curves.py runs/curves/fit/version_0 runs/curves/unet/version_0 ...
        -> results/learning_curves.csv, results/learning_curves.png, and a markdown summary on stdout
The bar (issue 27): colour accuracy >= 0.8 and shape accuracy >= 0.6 (the in-training probe on
``logging.quality_num_videos`` validation captions). Minutes are wall-clock from the run's first logged event.
"""

import csv
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TAGS = {
    "object_recovered_1": "val/object_recovered_sigma_1",
    "object_recovered_3": "val/object_recovered_sigma_3",
    "colour": "quality/color_accuracy",
    "shape": "quality/shape_accuracy",
    "direction": "quality/direction_accuracy",
    "probe_fvd": "quality/probe_fvd",
    "val_loss": "val/loss",
}
BAR = {"colour": 0.8, "shape": 0.6}


def curve(run: Path) -> list[dict]:
    """One row per logged step: the step, minutes since the run's first event, and every tag of TAGS it has."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    start = min(e.wall_time for t in tags for e in events.Scalars(t)[:1])
    rows: dict[int, dict] = {}
    for name, tag in TAGS.items():
        for e in events.Scalars(tag) if tag in tags else []:
            step = -(-e.step // 10) * 10  # validation logs at step 999, the probe at 1000: one row
            row = rows.setdefault(step, {"step": step, "minutes": round((e.wall_time - start) / 60, 1)})
            row[name] = round(e.value, 4)
    return [rows[s] for s in sorted(rows)]


def main(runs: list[str], out: str = "results/learning_curves") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = ["run", "step", "minutes", *TAGS]
    table = []
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    print(
        "| run | last step | minutes | first step at the bar (colour >= 0.8 and shape >= 0.6) | last object rec. @1 / @3 | last colour / shape / direction |"
    )
    print("|---|---|---|---|---|---|")
    for run in map(Path, runs):
        name = run.parent.name
        rows = curve(run)
        table += [{"run": name, **r} for r in rows]
        for ax, keys in zip(
            axes, (("object_recovered_1", "object_recovered_3"), ("colour",), ("shape",), ("direction",))
        ):
            for key in keys:
                points = [(r["step"], r[key]) for r in rows if key in r]
                if points:
                    ax.plot(*zip(*points), marker="o", label=f"{name} {key.replace('object_recovered_', 'sigma ')}")
        at_bar = next((r for r in rows if all(r.get(k, -1) >= v for k, v in BAR.items())), None)
        scored = [r for r in rows if "colour" in r]
        last = rows[-1] if rows else {}
        last_obj = next((r for r in reversed(rows) if "object_recovered_1" in r), {})
        last_q = scored[-1] if scored else {}
        reached = f"step {at_bar['step']} ({at_bar['minutes']} min)" if at_bar else "not reached"
        print(
            f"| {name} | {last.get('step', '-')} | {last.get('minutes', '-')} | {reached} | "
            f"{last_obj.get('object_recovered_1', '-')} / {last_obj.get('object_recovered_3', '-')} | "
            f"{last_q.get('colour', '-')} / {last_q.get('shape', '-')} / {last_q.get('direction', '-')} |"
        )
    titles = ("object recovered (val, EMA)", "colour accuracy (probe)", "shape accuracy (probe)", "direction accuracy")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[1].axhline(BAR["colour"], color="gray", ls="--", lw=0.8)
    axes[2].axhline(BAR["shape"], color="gray", ls="--", lw=0.8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(f"{out}.png", dpi=100)
    with open(f"{out}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)


if __name__ == "__main__":
    main(sys.argv[1:])

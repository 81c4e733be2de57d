"""The object screen's table (results/object_screen.md) from runs/screen/NAME/version_0 and the rows file.

    .venv/bin/python experiments/screen/object_table.py [experiments/screen/object_rows.txt] [runs/screen]
Per row: object recovered by D at sigma 1 and 3 (what the screen ranks by; evaluate's check, 16 validation clips,
no self-conditioning state), the object's and the background's MSE of D at sigma 1, the last validation's object
recovered at 1 and 3 (EMA, self-conditioned), probe accuracies of 16 samples, probe-FVD, train ms/video, the fit's wall time (1 thread, two rows side by side), and the
command that reproduces the row. A row without metrics.json is listed as failed or not run, with its log's last line.
"""

import json
import sys
from pathlib import Path


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    return lines[-1][:120] if lines else "not run"


def main(rows_file: str = "experiments/screen/object_rows.txt", root: str = "runs/screen") -> None:
    print(
        "| row | steps | object recovered @1 / @3 | object MSE @1 | background MSE @1 | val object rec. @1 / @3 "
        "| colour / shape / direction | probe-FVD | val loss | train ms/video | fit wall (s) | command |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for line in Path(rows_file).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, *args = line.split()
        command = f"`experiments/screen/row.sh {name} {' '.join(args)}`"
        run = Path(root) / name / "version_0"
        if not (run / "metrics.json").exists():
            print(f"| {name} | - | {last_line(Path(root) / f'{name}.log')} | | | | | | | | | {command} |")
            continue
        m = json.loads((run / "metrics.json").read_text())
        s = json.loads((run / "summary.json").read_text())
        val = s.get("final_object_recovered", {})

        def f(key, digits=2, d=m):
            return f"{d[key]:.{digits}f}" if d.get(key) is not None else "-"

        print(
            f"| {name} | {s['steps']} | {f('denoise/object_recovered_sigma_1')} / {f('denoise/object_recovered_sigma_3')} "
            f"| {f('denoise/object_mse_sigma_1', 3)} | {f('denoise/background_mse_sigma_1', 3)} "
            f"| {f('1', d=val)} / {f('3', d=val)} "
            f"| {f('probe/color_accuracy')} / {f('probe/shape_accuracy')} / {f('probe/direction_accuracy')} "
            f"| {f('probe/fvd', 0)} | {f('final_val_loss', 3, s)} | {f('train_ms_per_video', 1, s)} | {f('wall_time_s', 0, s)} | {command} |"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])

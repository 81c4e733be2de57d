"""Collect the screen's rows (runs/screen/*/) into the markdown table of results/fit_cpu_screen.md.

    .venv/bin/python experiments/screen/table.py [runs/screen] > table.md
Per row: final validation loss per sigma (EMA, fixed noise), the denoiser's MSE per sigma (evaluate's check,
no self-conditioning state) with the FIT / U-Net ratio against the row named ``unet_base``, the chain MSE
(self-conditioning from the sampler's previous call), probe metrics of 16 samples, train ms/video."""

import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SIGMAS = ("0.3", "3", "10", "30", "80")


def row(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    val = {
        t.split("_sigma_")[1]: events.Scalars(t)[-1].value
        for t in events.Tags()["scalars"]
        if t.startswith("val/loss_sigma_")
    }
    return {
        "name": run.parent.name,
        "summary": summary,
        "metrics": metrics,
        "val": val,
        "val_low": events.Scalars("val/loss_low")[-1].value if "val/loss_low" in events.Tags()["scalars"] else None,
    }


def main(root: str = "runs/screen") -> None:
    rows = [row(r) for r in sorted(Path(root).glob("*/version_0")) if (r / "summary.json").exists()]
    ref = next((r["metrics"] for r in rows if r["name"] == "unet_base"), {})
    print(
        "| row | steps | val loss (sigma<=3) | val loss @10 / @30 / @80 | MSE of D @"
        + " / @".join(SIGMAS)
        + " (FIT/U-Net) | chain MSE @10 / @30 | colour / shape / prompt acc. | probe-FVD | train ms/video |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m, v = r["metrics"], r["val"]
        mse = []
        for s in SIGMAS:
            value = m.get(f"denoise/mse_sigma_{s}")
            if value is None:
                mse.append("-")
                continue
            base = ref.get(f"denoise/mse_sigma_{s}")
            mse.append(f"{value:.3f}" + (f" ({value / base:.1f}x)" if base and r["name"] != "unet_base" else ""))
        chain = " / ".join(f"{m[k]:.3f}" if (k := f"denoise/chain_mse_sigma_{s}") in m else "-" for s in ("10", "30"))
        acc = " / ".join(
            f"{m[k]:.2f}" if (k := f"probe/{a}_accuracy") in m else "-" for a in ("color", "shape", "prompt")
        )
        print(
            f"| {r['name']} | {r['summary']['steps']} | {r['val_low']:.3f} | "
            + " / ".join(f"{v[s]:.3f}" if s in v else "-" for s in ("10", "30", "80"))
            + f" | {' / '.join(mse)} | {chain} | {acc} | {m.get('probe/fvd', float('nan')):.0f} | "
            f"{r['summary']['train_ms_per_video']:.0f} |"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])

#!/usr/bin/env bash
# One row of the CPU screen (results/fit_cpu_screen.md): the short recipe on one thread, then `evaluate`.
#   experiments/screen/row.sh NAME experiments/ablation/fit.yaml [key=value ...]   (runs/screen/NAME/version_0)
# EVAL_ARGS (e.g. "--sigma-max 20") go to evaluate; its metrics land in runs/screen/NAME/metrics.json.
set -euo pipefail
name=$1; yaml=$2; shift 2
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
cli=.venv/bin/lit-snapvideo
run=runs/screen/$name/version_0
$cli fit --no-progress "$yaml" logging.root=runs/screen logging.experiment="$name" trainer.cpu_threads=1 \
  trainer.max_steps=800 optim.warmup_steps=100 trainer.val_every_n_steps=400 logging.sample_every_n_steps=800 \
  logging.quality_every_n_steps=0 "$@"
$cli evaluate $run/checkpoints/last.ckpt --num-videos 16 --steps 24 ${EVAL_ARGS:-}

#!/usr/bin/env bash
# One row of the upsampler screen (results/upsampler_screen.md): the CPU upsampler recipe cut to STEPS (default 300)
# on one thread, then upsampler-eval (16 validation videos, 40 Heun steps; PSNR against the real clips).
#   experiments/screen/up_row.sh NAME [key=value ...]          (runs/up_screen/NAME/version_0)
set -euo pipefail
name=$1; shift
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
cli=.venv/bin/lit-snapvideo
run=runs/up_screen/$name/version_0
$cli fit --no-progress experiments/ablation/upsampler.yaml logging.root=runs/up_screen logging.experiment="$name" \
  trainer.cpu_threads=1 trainer.max_steps=${STEPS:-300} optim.warmup_steps=50 trainer.val_every_n_steps=${STEPS:-300} \
  logging.sample_every_n_steps=${STEPS:-300} trainer.max_time=null "$@"
$cli upsampler-eval $run/checkpoints/last.ckpt --aug-sigma 0 0.1 --png runs/up_screen/$name/upsampler.png \
  --out runs/up_screen/$name/upsampler.md

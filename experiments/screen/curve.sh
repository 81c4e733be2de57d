#!/usr/bin/env bash
# One learning curve (issue 27 item 4, results/learning_curves.md): a long run on one thread, with validation (object
# recovered), samples and the probe's accuracies on 16 validation captions every 1,000 steps.
#   experiments/screen/curve.sh NAME experiments/ablation/fit.yaml [key=value ...]   (runs/curves/NAME/version_0)
# STEPS (default 6000) sets the cosine schedule's length; rerunning resumes from the run's last.ckpt.
set -euo pipefail
name=$1; yaml=$2; shift 2
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
.venv/bin/lit-snapvideo fit --no-progress "$yaml" logging.root=runs/curves logging.experiment="$name" \
  trainer.cpu_threads=1 trainer.max_steps="${STEPS:-6000}" trainer.val_every_n_steps=1000 \
  logging.sample_every_n_steps=1000 logging.quality_every_n_steps=1000 logging.quality_num_videos=16 "$@"

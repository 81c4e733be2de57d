# lit-snapvideo: every target installs what it needs on first use (`make help` lists them).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.install-stamp
CLI := HF_HUB_OFFLINE=1 $(VENV)/bin/lit-snapvideo
export HF_HUB_OFFLINE := 1

.DEFAULT_GOAL := help
.PHONY: help install lint test test-full

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the kit (re-runs only when pyproject.toml/constraints.txt change)

lint: $(STAMP) ## ruff: lint and formatting (configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint ## lint, then the fast CPU test suite (what CI runs)
	$(PY) -m pytest -m "not slow" -q

test-full: $(STAMP) ## every test, the slow ones too
	$(PY) -m pytest -q

# the embedded set; its manifest is written last, so it marks a complete set
SHAPES := data/shapes/manifest.csv
.PHONY: data
data: $(SHAPES) ## generate the embedded moving-shapes set (4000 train + 256 val clips, a few minutes on 2 cores)

$(SHAPES): | $(STAMP)
	$(CLI) data shapes --out $(dir $(SHAPES))

# the CPU ablation's set: one large object on a plain background (data/README.md)
SIMPLE := data/shapes_simple/manifest.csv
$(SIMPLE): | $(STAMP)
	$(CLI) data shapes --variant simple --out $(dir $(SIMPLE))

# ---- training (issue: one EDM LightningModule; runs under runs/<experiment>/version_0, reruns resume) ----
.PHONY: ablation ablation-fit ablation-unet ablation-dit compare tensorboard
ablation-fit: probe ## train the FIT ablation (CPU scale): runs/fit/version_0 (rerun resumes)
	$(CLI) fit experiments/ablation/fit.yaml $(ARGS)

ablation-unet: probe ## train the 3D U-Net ablation on the same data, steps and seed: runs/unet/version_0
	$(CLI) fit experiments/ablation/unet.yaml $(ARGS)

.PHONY: probe
probe: $(SIMPLE) ## train (once; cached in .cache/probe) the probe network that scores the ablation's samples
	$(CLI) probe experiments/ablation/fit.yaml

ablation-dit: probe ## train the DiT control (full attention over every patch) on the same recipe: runs/dit/version_0
	$(CLI) fit experiments/ablation/dit.yaml $(ARGS)

ablation: ablation-fit ablation-unet ## both ablation runs, then results/ablation.md
	$(MAKE) compare

compare: $(STAMP) ## results/ablation.md: the runs side by side with the paper's Table 2 (the DiT's too once trained)
	$(CLI) compare runs/fit/version_0 runs/unet/version_0 $(wildcard runs/dit/version_0) --out results/ablation.md --plot docs/curves.png

tensorboard: $(STAMP) ## serve TensorBoard on runs/ (http://localhost:6006)
	$(VENV)/bin/tensorboard --logdir runs --port 6006

# ---- the cascade's second stage (issue 21): the FIT upsampler, 8x24x40 -> 8x48x80 on the ablation's data ----
.PHONY: ablation-upsampler upsampler-eval bench-upsampler bench-upsampler-gpu
UP_CKPT ?= runs/upsampler/version_0/checkpoints/last.ckpt
ablation-upsampler: $(SIMPLE) ## train the CPU upsampler (fit_up_mini, x2 of the ablation's clips, ~10 min): runs/upsampler/version_0
	$(CLI) fit experiments/ablation/upsampler.yaml $(ARGS)

upsampler-eval: $(STAMP) ## PSNR vs the real clips, upsampler against bicubic -> docs/upsampler.png, results/upsampler.{md,json}
	$(CLI) upsampler-eval $(UP_CKPT) $(ARGS)

bench-upsampler: $(STAMP) ## CPU: upsampler throughput (fit_up_mini at 8x48x80: eval, sample) -> results/upsampler/throughput.{csv,md}
	$(CLI) bench --presets fit_up_mini --phases eval,sample --sample-steps 4 --out results/upsampler $(ARGS)

bench-upsampler-gpu: $(STAMP) ## GPU: the paper's upsampler at 16x288x512 (147,456 patches), bf16, batch 1 -> results/gpu/upsampler/
	$(CLI) bench --presets fit_3_9b_upsampler,fit_up_mini --precision bf16 --batch-size 1 --phases eval,sample --paper-phases eval,sample --memory-fraction 0.92 --out results/gpu/upsampler $(ARGS)

# ---- throughput (issue 7: paper Table 2 speed columns, FIT/U-Net ratios, MFU, scaling curves) ----
.PHONY: bench bench-table bench-paper bench-scaling bench-compile
BENCH_BUDGET ?= 540
SCALING_BUDGET ?= 270
bench: $(STAMP) ## CPU: results/throughput.{csv,md}, results/scaling.{csv,png}, results/compile/ (~22 min on 2 cores)
	$(MAKE) bench-table
	$(MAKE) bench-scaling
	$(MAKE) bench-compile

bench-compile: $(STAMP) ## the ablation pair's training step at its clip, eager and torch.compile'd, with MFU: results/compile/throughput.{csv,md}
	$(CLI) bench --presets fit_mini,unet_mini --batch-size 8 --frames 8 --size 24 40 --phases train --compile-rows --threads 2 --out results/compile $(ARGS)

bench-table: $(STAMP) ## the throughput table: small pair (batch 4, all phases) + paper presets that fit (eval only on CPU)
	$(CLI) bench --batch fit_small=4 --batch unet_small=4 --sample-steps 4 --time-budget $(BENCH_BUDGET) $(ARGS)

bench-paper: $(STAMP) ## GPU: the four paper presets at 16x40x64, bf16, batch 8, all phases -> results/gpu/ (fit_3_9b training needs ~105 GiB: an H200)
	$(CLI) bench --presets unet_85m,unet_284m,fit_500m,fit_3_9b --precision bf16 --batch-size 8 --phases eval,sample,train --paper-phases eval,sample,train --memory-fraction 0.92 --out results/gpu $(ARGS)

bench-scaling: $(STAMP) ## ms/video + peak memory vs frames (4-32) and resolution (36x64-144x256): results/scaling.{csv,png}
	$(CLI) bench --scaling --time-budget $(SCALING_BUDGET) $(ARGS)

# ---- evaluation (offline probe metrics; FVD/FID/CLIPSIM need your detector files: EVAL_ARGS="--fvd-detector i3d.pt") ----
.PHONY: evaluate ablation-sigma
evaluate: $(STAMP) ## score both ablation runs (runs/{fit,unet}/version_0) -> metrics.json, then make compare
	$(CLI) evaluate runs/fit/version_0/checkpoints/last.ckpt $(EVAL_ARGS)
	$(CLI) evaluate runs/unet/version_0/checkpoints/last.ckpt $(EVAL_ARGS)
	$(MAKE) compare

SIGMA_ROWS := edm_original sigma_data_0_5 sigma_in_2 images_not_videos ours
SIGMA_METRICS := $(foreach r,$(SIGMA_ROWS),runs/sigma_$(r)/version_0/metrics.json)
ablation-sigma: $(SIGMA_METRICS) ## Table 3 at CPU scale: train + evaluate 5 variants -> results/sigma_ablation.md (side by side: make -j5 ablation-sigma ARGS=trainer.cpu_threads=1 OMP_NUM_THREADS=1; without the latter the five evaluations, two threads each, thrash the cores)
	$(CLI) compare $(foreach r,$(SIGMA_ROWS),runs/sigma_$(r)/version_0) --table sigma --out results/sigma_ablation.md

.PHONY: probe-sigma
probe-sigma: $(SIMPLE)  # the probe at Table 3's clip (16x36x64; the ablation's probe is 8x24x40), trained once
	$(CLI) probe experiments/sigma/ours.yaml

runs/sigma_%/version_0/metrics.json: | probe-sigma  # one row of Table 3: train (a rerun resumes), then score
	$(CLI) fit experiments/sigma/$*.yaml $(ARGS)
	$(CLI) evaluate runs/sigma_$*/version_0/checkpoints/last.ckpt $(EVAL_ARGS)

# ---- one-call GPU check (issue 20): throughput at batch 8 and 64, eager and compiled, the four paper presets at
# batch 64, both ablation recipes for a fixed wall clock each -> results/gpu/ (ARGS=--dry-run: tiny, on the CPU)
.PHONY: gpu-check
GPU_CHECK_BUDGET ?= 540
gpu-check: $(STAMP) ## GPU: every issue-20 measurement in one call within GPU_CHECK_BUDGET s -> results/gpu/ (ARGS=--dry-run: CPU, ~1 min)
	$(CLI) gpu-check --budget $(GPU_CHECK_BUDGET) $(ARGS)

# ---- the paper's sampling figures from checkpoints (issue 20): Fig. 5 (CFG weight) and Fig. 6 (sampling steps)
.PHONY: sweep-cfg sweep-steps
CKPT ?= runs/fit/version_0/checkpoints/last.ckpt runs/unet/version_0/checkpoints/last.ckpt
sweep-cfg: $(STAMP) ## Fig. 5: probe-FVD and prompt accuracy against the CFG weight (0-16) -> results/sweep_cfg.{csv,png} (CKPT=..., ARGS="--fvd-detector i3d.pt --num-videos 32")
	$(CLI) sweep cfg $(CKPT) $(ARGS)

sweep-steps: $(STAMP) ## Fig. 6: the same against the sampling steps (16-1024; 256 at most on a CPU) -> results/sweep_steps.{csv,png}
	$(CLI) sweep steps $(CKPT) $(ARGS)

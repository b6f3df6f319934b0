#!/usr/bin/env bash
# The prepared GPU check (statistics issue): the decisive protocol at the papers' settings on the
# embedded default model, sized for about 10 minutes on one large GPU, records into results/.
#
#   bash scripts/gpu_check.sh            # on a machine with CUDA and this repository set up (make setup)
#
# Settings: 128 x 2048 C4 calibration (c4-train when fetched, else the shipped documents), every
# leap6 item except MMLU at 20 per subject, the whole WikiText-2 test set at the LEAP paper's
# 4096-token window, bfloat16, dense + Wanda + ADMM + LEAP at 50% and 60%. LEAP trains 200 steps
# of 4 x 8 sequences of 4096 tokens (26M tokens, about 1/40 of the paper's budget) from its Wanda
# prior, with the small-budget recipe (tau_start 1, one mask per micro-batch: the default up to 256
# steps, docs/leap.md). Each cell writes its record as soon as it ends, so a run cut short keeps what it finished;
# re-running the script computes only the missing cells. Nothing here has run on a GPU yet: the
# first session that is lent one runs it and commits results/gpu-check and reports/gpu-check.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-results/gpu-check}
"$BIN/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device is visible: this check needs a GPU')"
# LEAP's exact reference mode against torch's own CUDA gumbel_softmax (skipped on CPU; seconds).
"$BIN/python" -m pytest -q -p no:cacheprovider tests/test_leap.py -k "cuda or bfloat16" | tail -3
"$BIN/harness" run --model smollm2-135m --methods wanda,admm,leap --sparsity 0.5,0.6 --device cuda --dtype bfloat16 \
  --nsamples 128 --seqlen 2048 --ppl-seqlen 4096 --ppl-tokens all --tasks leap6 --limit all --mmlu-limit 20 \
  --set leap.steps=200 --set leap.grad_accum=8 --out "$OUT" --no-report
"$BIN/harness" report "$OUT" --baseline admm --out "reports/$(basename "$OUT")"

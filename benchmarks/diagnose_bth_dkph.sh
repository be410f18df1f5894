#!/usr/bin/env bash
# Why BTH and DKPH lose on the fashion clips: one validation learning curve per setting (docs/quality.md).
# Every run is benchmarks/bench_select.py (the product's trainers, the bench runner's validation split,
# code statistics per epoch) appending one JSON line to benchmarks/results/select_fashion.jsonl.
# Needs the fashion features of `vhindex bench quality`. One thread per run (2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EPOCHS=${EPOCHS:-40}
ARCH='"hidden": 128, "ffn": 512'
LOG=benchmarks/results/select_fashion.jsonl
# run TAG ARGS...: skipped when the log already holds TAG (re-running the script continues it)
run() {
  local tag=$1; shift
  if [ -f "$LOG" ] && grep -q "\"tag\": \"$tag\"" "$LOG"; then echo "skip $tag (in $LOG)"; return; fi
  OMP_NUM_THREADS=1 "$PY" benchmarks/bench_select.py --bits 64 --epochs "$EPOCHS" --tag "$tag" --log "$LOG" "$@"
}
# The benchmark's settings (released network, short-schedule lr 1e-3, teacher 40 epochs)
run dkph-bench --method dkph --params "{$ARCH}" --train '{"lr": 1.0e-3}'
run bth-bench --method bth --params "{$ARCH}" --train '{"lr": 1.0e-3}'
# One change at a time on DKPH (the same teacher and graph)
run dkph-no-bsim --method dkph --params "{$ARCH, \"use_bsim\": false}" --train '{"lr": 1.0e-3}'
run dkph-no-tsim --method dkph --params "{$ARCH, \"use_tsim\": false}" --train '{"lr": 1.0e-3}'
run dkph-hash-mean --method dkph --params "{$ARCH, \"hash_input\": \"mean\"}" --train '{"lr": 1.0e-3}'
run dkph-no-temporal --method dkph --params "{$ARCH, \"temporal\": false}" --train '{"lr": 1.0e-3}'
run dkph-mean-no-temporal --method dkph --params "{$ARCH, \"hash_input\": \"mean\", \"temporal\": false}" --train '{"lr": 1.0e-3}'
# Settings the teacher shares (learning rate, masking, width): their own teacher and graph
run dkph-lr3e-4 --method dkph --work bench-work/select-lr3e-4 --params "{$ARCH}" --train '{"lr": 3.0e-4}'
run dkph-mask0.5 --method dkph --work bench-work/select-mask0.5 --params "{$ARCH}" --train '{"lr": 1.0e-3, "mask_prob": 0.5}'
run dkph-hidden256 --method dkph --work bench-work/select-h256 --params '{"hidden": 256, "ffn": 1024}' --train '{"lr": 1.0e-3}'
# Label purity of the shared teacher graph's pairs (+1 / -1 / untagged vs random)
"$PY" benchmarks/graph_purity.py bench-work/select/seed0/graph \
  --train bench-work/quality/fashion/features/validation/train > benchmarks/results/graph_purity_fashion.json

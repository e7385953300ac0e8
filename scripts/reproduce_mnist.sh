#!/usr/bin/env bash
# Trains (or resumes) the paper's four MNIST runs, then evaluates the three
# defences black-box against the Unsecured run as the transfer source.
#
#   bash scripts/reproduce_mnist.sh [RUNS_DIR] [DATA_DIR]
#
# RUNS_DIR defaults to ../runs (outside the repository), DATA_DIR to
# ../shared/data/mnist. Each run checkpoints every 100 steps and every epoch:
# run the script again after an interruption and every run resumes where it
# stopped (finished runs are only re-evaluated). PARALLEL=1 trains the four
# runs at once (niced) instead of one after another. EXTRA_FLAGS are added
# to every training command (e.g. a smoke test: EXTRA_FLAGS="--num_epochs=1
# --num_train_examples=256 --num_eval_examples=100"), EVAL_FLAGS to every
# black-box evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=$(realpath -m "${1:-../runs}")
DATA=$(realpath -m "${2:-../shared/data/mnist}")
METHODS=(unsecured standard dynamic curriculum)
mkdir -p "$RUNS"

train() {
  python -m experiments.mnist --flagfile="experiments/configs/mnist_$1.flags" \
    --data_dir="$DATA" --workdir="$RUNS/mnist_$1" \
    --checkpoint_every_steps=100 ${EXTRA_FLAGS:-} >> "$RUNS/mnist_$1.log" 2>&1
}

if [[ "${PARALLEL:-0}" == 1 ]]; then
  for m in "${METHODS[@]}"; do
    (renice -n 19 "$BASHPID" > /dev/null; train "$m") &
  done
  wait
else
  for m in "${METHODS[@]}"; do train "$m"; done
fi

for m in standard dynamic curriculum; do
  python -m experiments.evaluate --workdir="$RUNS/mnist_$m" \
    --source_workdir="$RUNS/mnist_unsecured" --data_dir="$DATA" \
    ${EVAL_FLAGS:-}
done

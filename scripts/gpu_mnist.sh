#!/usr/bin/env bash
# The paper's MNIST runs on one lent GPU machine, all at once, inside a fixed
# time budget, packing the workdirs for the trip back as it goes.
#
#   bash scripts/gpu_mnist.sh DATA_DIR OUT_DIR [SECONDS]
#
# Trains Unsecured, Standard, Dynamic and Curriculum (seed 0) with the paper's
# flagfiles (experiments/configs/mnist_*.flags) as four processes sharing the
# GPU; once Unsecured has finished, also Standard and Dynamic with seed 1.
# Each finished defence (seed 0) is then evaluated black-box against the
# Unsecured run (experiments.evaluate --source_workdir); the white-box
# evaluation on the full test set ends every training run.
#
# Every run stops (SIGINT: pending checkpoints are written) before SECONDS
# (default 540) have passed; an unfinished run resumes from its newest
# checkpoint when the script is run again on the same machine (RUNS, default
# /tmp/runs, survives while the machine stays warm), or on any machine from
# the unpacked workdir with the training command of scripts/reproduce_mnist.sh
# (add --seed=1 for the seed-1 runs). Logs are appended to, across resumes.
# Every 60 s and at the end, OUT_DIR/<run>.tgz is rewritten with the run's
# flags.json, metrics.jsonl, TensorBoard events, figures, results, newest
# checkpoint and the FOSC arrays of epochs 1-5 and every fifth epoch (the
# rest stay on the GPU machine: all of them would not fit the trip back), and
# OUT_DIR/logs.tgz with the logs. A run that fails in the first 150 s stops
# everything (the budget is better spent on a fixed rerun).
#
# EXTRA_FLAGS are added to every training command and EVAL_FLAGS to every
# black-box evaluation (a smoke test: EXTRA_FLAGS="--num_epochs=2
# --num_train_examples=512 --eval_every_examples=100 --num_eval_examples=200").
#
# Python packages missing on the GPU machine are installed from wheels in
# .whl/ (e.g. tensorboardX) into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=$(realpath "$1")
OUT=$(realpath -m "$2")
LIMIT=${3:-540}
RUNS=${RUNS:-/tmp/runs}
T0=$SECONDS
mkdir -p "$RUNS" "$OUT"
# Exit statuses of an earlier call on the same (still warm) machine are stale.
rm -f "$RUNS"/*.rc
exec > >(tee -a "$RUNS/driver.log") 2>&1
. scripts/gpu_env.sh

declare -A PID RC

train() {  # NAME METHOD SEED
  local name=$1 method=$2 seed=$3
  (
    timeout -s INT -k 30 $(($(left) - 30)) python3 -m experiments.mnist \
      --flagfile="experiments/configs/mnist_$method.flags" --seed="$seed" \
      --data_dir="$DATA" --workdir="$RUNS/$name" ${EXTRA_FLAGS:-} \
      >> "$RUNS/$name.log" 2>&1
    echo $? > "$RUNS/$name.rc"
  ) &
  PID[$name]=$!
  echo "[$(elapsed) s] started $name"
}

black_box() {  # NAME
  local name=$1
  (
    timeout -s INT -k 10 $(($(left) - 20)) python3 -m experiments.evaluate \
      --workdir="$RUNS/$name" --source_workdir="$RUNS/mnist_unsecured" \
      --data_dir="$DATA" ${EVAL_FLAGS:-} >> "$RUNS/$name.eval.log" 2>&1
    echo $? > "$RUNS/$name.eval.rc"
  ) &
  PID[$name.eval]=$!
  echo "[$(elapsed) s] started the black-box evaluation of $name"
}

pack() {
  local d name ckpt items
  for d in "$RUNS"/*/; do
    name=$(basename "$d")
    items=()
    for f in flags.json metrics.jsonl tb fosc_histograms.png \
      training_curves.png results.json results.md; do
      [[ -e $d/$f ]] && items+=("$name/$f")
    done
    ckpt=$(ls "$d/checkpoints" 2> /dev/null | grep -E '^[0-9]+$' | sort -n |
      tail -1)
    [[ -n $ckpt ]] && items+=("$name/checkpoints/$ckpt")
    if [[ -d $d/fosc ]]; then
      for f in "$d"/fosc/epoch_*.npy; do
        local e=$((10#$(basename "$f" .npy | sed 's/epoch_//')))
        if ((e < 5 || (e + 1) % 5 == 0)); then
          items+=("$name/fosc/$(basename "$f")")
        fi
      done
    fi
    tar czf "$OUT/$name.tgz.part" -C "$RUNS" "${items[@]}" 2> /dev/null &&
      mv "$OUT/$name.tgz.part" "$OUT/$name.tgz"
  done
  (cd "$RUNS" && tar czf "$OUT/logs.tgz.part" ./*.log ./*.rc 2> /dev/null) &&
    mv "$OUT/logs.tgz.part" "$OUT/logs.tgz"
}

status() {  # NAME -> the exit status, or empty while running
  [[ -f $RUNS/$1.rc ]] && cat "$RUNS/$1.rc"
}

for m in unsecured standard dynamic curriculum; do
  train "mnist_$m" "$m" 0
done

seed1=0
declare -A EVALUATED
last_pack=$SECONDS
while (($(left) > 15)); do
  sleep 5
  running=0
  for name in "${!PID[@]}"; do
    kill -0 "${PID[$name]}" 2> /dev/null && running=1
  done
  # Fail fast: a run that died early is a bug to fix, not to wait out.
  for name in mnist_unsecured mnist_standard mnist_dynamic mnist_curriculum; do
    rc=$(status "$name")
    if [[ -n $rc && $rc != 0 ]] && (($(elapsed) < 150)); then
      echo "[$(elapsed) s] $name failed early (exit $rc):"
      tail -c 3000 "$RUNS/$name.log"
      for n in "${!PID[@]}"; do pkill -INT -P "${PID[$n]}" 2> /dev/null; done
      sleep 10
      pack
      exit 1
    fi
  done
  if [[ $(status mnist_unsecured) == 0 ]]; then
    if ((seed1 == 0 && $(left) > 240)); then
      train mnist_standard_seed1 standard 1
      train mnist_dynamic_seed1 dynamic 1
      seed1=1
    fi
    for m in standard dynamic curriculum; do
      if [[ $(status "mnist_$m") == 0 && -z ${EVALUATED[$m]:-} ]]; then
        black_box "mnist_$m"
        EVALUATED[$m]=1
      fi
    done
  fi
  if ((SECONDS - last_pack >= 60)); then
    pack
    last_pack=$SECONDS
    echo "[$(elapsed) s] packed; newest epoch per run:"
    for f in "$RUNS"/*/metrics.jsonl; do
      echo "  $(basename "$(dirname "$f")"): $(tail -1 "$f" | cut -c 1-220)"
    done
  fi
  ((running == 0)) && break
done

# Stop what still runs: SIGINT (pending checkpoints are written), SIGKILL
# after 20 s. (A bare `wait` would also wait for the tee above, forever.)
for n in "${!PID[@]}"; do pkill -INT -P "${PID[$n]}" 2> /dev/null; done
for _ in $(seq 20); do
  alive=0
  for n in "${!PID[@]}"; do kill -0 "${PID[$n]}" 2> /dev/null && alive=1; done
  ((alive == 0)) && break
  sleep 1
done
for n in "${!PID[@]}"; do pkill -KILL -P "${PID[$n]}" 2> /dev/null; done
pack
echo "[$(elapsed) s] done. Exit status per run (124: stopped by the budget):"
for f in "$RUNS"/*.rc; do echo "  $(basename "$f" .rc): $(cat "$f")"; done
for f in "$RUNS"/*/results.md; do
  echo "== $f"
  cat "$f"
done
ls -la "$OUT"

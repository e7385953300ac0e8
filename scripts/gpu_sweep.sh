#!/usr/bin/env bash
# A sweep grid (experiments/grids/*.json) on one lent GPU machine inside a
# fixed time budget, packing the workdirs for the trip back as it goes.
#
#   bash scripts/gpu_sweep.sh GRID DATA_DIR OUT_DIR [SECONDS] [JOBS]
#
# Runs `python -m experiments.sweep` with JOBS (default 6) runs sharing the
# GPU; the sweep stops its runs with SIGINT (they checkpoint) when SECONDS
# (default 540) minus 40 have passed. Every 60 s and at the end,
# OUT_DIR/<variant>.tgz is rewritten with its runs' flags.json,
# metrics.jsonl, results, figures, newest checkpoint and some FOSC arrays (see
# pack), and OUT_DIR/logs.tgz with the logs. Unpack them into the sweep's
# runs folder (workdirs/<grid name>/) on any machine and rerun the same sweep
# command there: finished runs are skipped, unfinished ones resume.
#
# RUNS (default /tmp/runs/<grid name>) survives while the machine stays warm,
# so calling the script again on a warm machine resumes in place. Python
# packages missing on the GPU machine are installed from wheels in .whl/
# into /tmp/site. Smoke test: EXTRA_SWEEP_FLAGS="--only=standard_seed0".
set -uo pipefail
cd "$(dirname "$0")/.."
GRID=$1
DATA=$(realpath "$2")
OUT=$(realpath -m "$3")
LIMIT=${4:-540}
JOBS=${5:-6}
NAME=$(basename "$GRID" .json)
RUNS=${RUNS:-/tmp/runs/$NAME}
mkdir -p "$RUNS" "$OUT"
exec > >(tee -a "$RUNS/driver.log") 2>&1
. scripts/gpu_env.sh

# The trip back takes at most 8 files of 16 MiB, 64 MiB in all: one tarball
# per variant (all its seeds) and logs.tgz, each run with its newest
# checkpoint and the FOSC arrays of the epochs in FOSC_EPOCHS (default 0, 4,
# 9, 14, ..., the rest stay on the machine).
FOSC_EPOCHS=${FOSC_EPOCHS:-$(seq -s ' ' 4 5 999)}
pack() {
  local d name variant ckpt f e
  declare -A items=()
  for d in "$RUNS"/*/; do
    name=$(basename "$d")
    variant=${name%_seed*}
    for f in flags.json metrics.jsonl tb fosc_histograms.png \
      training_curves.png results.json results.md; do
      [[ -e $d/$f ]] && items[$variant]+=" $name/$f"
    done
    for e in 0 $FOSC_EPOCHS; do
      f=$(printf 'fosc/epoch_%04d.npy' "$e")
      [[ -e $d/$f ]] && items[$variant]+=" $name/$f"
    done
    ckpt=$(ls "$d/checkpoints" 2> /dev/null | grep -E '^[0-9]+$' | sort -n |
      tail -1)
    [[ -n $ckpt ]] && items[$variant]+=" $name/checkpoints/$ckpt"
  done
  for variant in "${!items[@]}"; do
    # shellcheck disable=SC2086  # the names hold no spaces
    tar czf "$OUT/$variant.tgz.part" -C "$RUNS" ${items[$variant]} \
      2> /dev/null && mv "$OUT/$variant.tgz.part" "$OUT/$variant.tgz"
  done
  (cd "$RUNS" && tar czf "$OUT/logs.tgz.part" ./*.log table.* 2> /dev/null) &&
    mv "$OUT/logs.tgz.part" "$OUT/logs.tgz"
}

python3 -m experiments.sweep --grid="$GRID" --runs_dir="$RUNS" \
  --data_dir="$DATA" --jobs="$JOBS" --threads_per_job=0 \
  --max_seconds=$((LIMIT - 40)) ${EXTRA_SWEEP_FLAGS:-} &
SWEEP=$!
while kill -0 $SWEEP 2> /dev/null; do
  for _ in $(seq 12); do
    sleep 5
    kill -0 $SWEEP 2> /dev/null || break
  done
  pack
  echo "[$SECONDS s] packed; newest epoch per run:"
  for f in "$RUNS"/*/metrics.jsonl; do
    [[ -f $f ]] || continue
    echo "  $(basename "$(dirname "$f")"): $(tail -1 "$f" | cut -c 1-160)"
  done
done
wait $SWEEP
echo "sweep exit status $?"
pack
ls -la "$OUT"

#!/usr/bin/env bash
# Packs unfinished training workdirs so a later session (on a fresh machine) can
# resume them with the very command that started them.
#
#   scripts/bundle_runs.sh pack RUNS_ROOT NAME...   # -> resume/NAME.tar.gz
#   scripts/bundle_runs.sh unpack RUNS_ROOT          # resume/*.tar.gz -> RUNS_ROOT
#
# NAME is a workdir path relative to RUNS_ROOT (e.g. mnist/standard_seed0). Only
# the newest committed checkpoint (one with commit_success.txt) is kept; the
# logs, metrics, flags.json and FOSC arrays go along. resume/NAME.cmd holds the
# command to rerun (the run's own log records it; write it with `cmd`):
#
#   scripts/bundle_runs.sh cmd NAME 'python -m experiments.mnist ...'
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/resume"
mode="${1:?usage: bundle_runs.sh pack|unpack|cmd ...}"; shift
case "$mode" in
  pack)
    root="${1:?RUNS_ROOT}"; shift
    for name in "$@"; do
      wd="$root/$name"
      [[ -f "$wd/flags.json" ]] || { echo "no run at $wd (flags.json missing)" >&2; exit 1; }
      newest=""
      for c in $(ls "$wd/checkpoints" | sort -n); do
        [[ -f "$wd/checkpoints/$c/commit_success.txt" ]] && newest="$c"
      done
      [[ -n "$newest" ]] || { echo "no committed checkpoint in $wd/checkpoints" >&2; exit 1; }
      excludes=()
      for c in $(ls "$wd/checkpoints"); do
        [[ "$c" == "$newest" ]] || excludes+=(--exclude="$name/checkpoints/$c")
      done
      mkdir -p "$out/$(dirname "$name")"
      tmp="$out/$name.tar.gz.tmp"
      tar -C "$root" "${excludes[@]}" -czf "$tmp" "$name"
      mv "$tmp" "$out/$name.tar.gz"
      echo "$out/$name.tar.gz: checkpoint $newest, $(du -h "$out/$name.tar.gz" | cut -f1)"
    done ;;
  unpack)
    root="${1:?RUNS_ROOT}"
    find "$out" -name '*.tar.gz' | while read -r f; do
      name="${f#$out/}"; name="${name%.tar.gz}"
      if [[ -e "$root/$name/flags.json" ]]; then
        echo "$root/$name exists; left as is (remove it to restore the bundle)"
      else
        mkdir -p "$root"; tar -C "$root" -xzf "$f"; echo "restored $root/$name"
      fi
    done ;;
  cmd)
    name="${1:?NAME}"; mkdir -p "$out/$(dirname "$name")"; printf '%s\n' "$2" > "$out/$name.cmd" ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac

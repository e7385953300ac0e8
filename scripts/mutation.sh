#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3 (pip install mutmut).
#
#   scripts/mutation.sh MODULE [mutmut run arguments, e.g. a mutant name]
#
# MODULE is fosc, attacks, train or checkpoint. Each module is mutated in its
# own scratch copy of the tracked files, $MUTATION_DIR/MODULE (default
# /tmp/dynamic_at_mutation/MODULE), with a [tool.mutmut] section appended to
# that copy's pyproject.toml: the repository itself is never changed. mutmut
# runs each mutant only against the tests of the fast selection below that
# call the mutated function (its "stats" pass records which do).
#
# Run it from an environment that has the package's dependencies and mutmut
# (`mutmut` on PATH, or MUTMUT=/path/to/mutmut). A second call with the same
# MODULE starts over (FRESH=0 keeps mutmut's mutants and cached results and
# only refreshes the tests, e.g. to rerun survivors after adding a test:
# FRESH=0 scripts/mutation.sh fosc 'dynamic_at._fosc.x_fosc__mutmut_9').
#
# JAX and forks: every mutant runs in a fresh process forked from a server
# that has not imported JAX (process_isolation = forkserver, warmup none), so
# no jit cache traced with the original code is inherited (a mutant would
# then falsely survive) and no fork happens after XLA started its threads.
# A persistent XLA compilation cache is shared: a mutant that changes the
# traced program compiles anew (the cache is keyed on the program).
set -euo pipefail

module="${1:?usage: scripts/mutation.sh fosc|attacks|train|checkpoint [mutmut run args]}"
shift
case "$module" in
  fosc)
    file=dynamic_at/_fosc.py
    tests='"tests/test_fosc.py"' ;;
  attacks)
    file=dynamic_at/_attacks.py
    tests='"tests/test_attacks.py", "tests/test_fosc.py"' ;;
  train)
    file=dynamic_at/train.py
    tests='"tests/test_train.py"' ;;
  checkpoint)
    file=dynamic_at/checkpoint.py
    # Without the resume test, which trains MNIST in subprocesses; with the
    # in-process tests of unreadable checkpoints from test_interruptions.
    tests='"tests/test_checkpoint.py", "tests/test_interruptions.py", "-k", "not test_interrupted_and_resumed_run_is_bit_identical and (test_checkpoint or unreadable or no_readable or read_only_restore)"' ;;
  *)
    echo "unknown module '$module': fosc, attacks, train or checkpoint" >&2
    exit 2 ;;
esac

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${MUTATION_DIR:-/tmp/dynamic_at_mutation}/$module"
mutmut="${MUTMUT:-mutmut}"

if [[ "${FRESH:-1}" != 0 ]]; then
  rm -rf "$work"
fi
mkdir -p "$work"
# The tracked files as they are in the working tree (with FRESH=0 the tests are
# refreshed; mutmut keeps its mutants/ copy of the source).
git -C "$repo" ls-files -z | (cd "$repo" && tar --null -T - -cf -) |
  tar -xf - -C "$work"
cat >> "$work/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["dynamic_at/"]
only_mutate = ["$file"]
# test_interruptions imports the experiments package.
also_copy = ["experiments/"]
pytest_add_cli_args_test_selection = [$tests]
pytest_add_cli_args = ["-p", "no:cacheprovider", "--basetemp=$work/pytest-tmp"]
process_isolation = "forkserver"
forkserver_warmup = "none"
# Each mutant's process imports JAX and compiles its tests' programs anew.
timeout_constant = 30.0
# A mutant that never ends its loop (e.g. the PGD iteration counter going
# down) is stopped after (selection's time + 30 s) * 2 * 2 CPU seconds
# (mutmut's default multiplier 15 would wait half an hour).
timeout_multiplier = 2.0
use_git_change_detection = false
EOF

cd "$work"
export JAX_PLATFORMS=cpu
# As the tests' subprocesses (tests/run_utils.py FAST_XLA): cheap compiles.
export XLA_FLAGS='--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
export JAX_COMPILATION_CACHE_DIR="$work/jax-cache"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
# One mutant at a time: the tests share --basetemp.
start=$(date +%s)
"$mutmut" run --max-children 1 "$@"
echo "mutmut run took $(( $(date +%s) - start )) s"
"$mutmut" export-cicd-stats
cat mutants/mutmut-cicd-stats.json
echo
"$mutmut" results

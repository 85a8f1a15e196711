#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 20) with its corpus in fuzz/corpus/.
# Needs a nightly toolchain; installs cargo-fuzz if it is missing. Prints one summary line per
# target (executions, corpus size) and fails if any target finds a crash.
#
#   scripts/fuzz.sh 20          # CI budget
#   scripts/fuzz.sh 600         # a longer local run (new corpus entries land in fuzz/corpus/)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-20}"
TARGETS="${FUZZ_TARGETS:-packet link_frame directory bundle reassembly pull_session}"

if ! rustup toolchain list | grep -q nightly; then
    echo "!!!! SKIPPING FUZZING: no nightly toolchain (rustup toolchain install nightly) !!!!"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

LOG_DIR="${FUZZ_LOG_DIR:-$(mktemp -d)}"
mkdir -p "$LOG_DIR"
status=0
for target in $TARGETS; do
    mkdir -p "fuzz/corpus/$target"
    log="$LOG_DIR/$target.log"
    echo "== fuzz $target for ${SECONDS_PER_TARGET}s"
    # Fuzz into a scratch copy of the corpus so CI runs leave the repo unchanged.
    work="$(mktemp -d)"
    cp -r "fuzz/corpus/$target/." "$work/" 2>/dev/null || true
    if ! cargo +nightly fuzz run "$target" "$work" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$log" 2>&1; then
        echo "!!!! $target FAILED (log: $log)"
        tail -40 "$log"
        status=1
    fi
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    corpus="$(ls "$work" | wc -l)"
    echo "fuzz $target: ${execs} executions in ${SECONDS_PER_TARGET}s, corpus ${corpus} inputs"
    if [ "${FUZZ_KEEP_CORPUS:-0}" = "1" ]; then
        cp -n "$work"/* "fuzz/corpus/$target/" 2>/dev/null || true
    fi
    rm -rf "$work"
done
exit $status

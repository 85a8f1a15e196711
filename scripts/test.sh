#!/usr/bin/env bash
# The test command from README.md. Installs what it needs, then runs every test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust toolchain pieces the checks need (present on a fresh machine via rustup).
rustup component add clippy rustfmt >/dev/null 2>&1 || true

echo "== unit, property and per-crate integration tests"
cargo test --workspace --exclude spore-tests --locked 2>&1

# The crash tests SIGKILL the real binaries (spore-relay, spore-sidecar): build them first,
# `cargo test -p spore-tests` does not build other packages' binaries.
echo "== binaries for the crash tests"
cargo build --bins --locked 2>&1

# Whole-network tests measure timing on the wire (Poisson statistics an observer sees):
# run them one at a time so they do not share two cores with each other.
echo "== whole-network tests"
cargo test -p spore-tests --locked -- --test-threads=1 2>&1

#!/usr/bin/env bash
# The test command from README.md. Installs what it needs, then runs every test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust toolchain pieces the checks need (present on a fresh machine via rustup).
rustup component add clippy rustfmt >/dev/null 2>&1 || true

echo "== cargo test --workspace"
cargo test --workspace --locked 2>&1

echo "== tests/synapse/run.sh (two Synapse homeservers federating only through Spore)"
bash tests/synapse/run.sh

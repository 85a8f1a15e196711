#!/usr/bin/env bash
# The test command from README.md. Installs what it needs, then runs every test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust toolchain pieces the checks need (present on a fresh machine via rustup).
rustup component add clippy rustfmt >/dev/null 2>&1 || true

# The Synapse interop test needs a venv-capable python3, curl and ss (iproute2).
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null 2>&1 \
        || echo "warning: could not install ${missing[*]}"
fi

echo "== unit, property and per-crate integration tests"
cargo test --workspace --exclude spore-tests --locked 2>&1

# The crash tests SIGKILL the real binaries (spore-relay, spore-sidecar); spore-testkit
# builds them on first use (`cargo build --bin NAME` into the same target directory).
# Whole-network tests measure timing on the wire (Poisson statistics an observer sees):
# run them one at a time so they do not share two cores with each other.
echo "== whole-network tests"
cargo test -p spore-tests --locked -- --test-threads=1 2>&1

echo "== tests/synapse/run.sh (three Synapse homeservers federating only through Spore)"
bash tests/synapse/run.sh

# Large answers (2,000-event send_join, /state, backfill of 500, 5 MiB media) take many
# minutes on 2 cores (docs/synapse.md "Large answers with real Synapse"): opt-in.
if [ "${SPORE_TEST_BIG:-}" = 1 ]; then
    echo "== tests/synapse/big.sh (large answers with real Synapse)"
    bash tests/synapse/big.sh
fi

echo "== scripts/package-test.sh (Debian package: contents, systemd unit, alert rules, install)"
bash scripts/package-test.sh

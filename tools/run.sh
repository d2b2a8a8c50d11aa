#!/usr/bin/env bash
# Runs the `atedm` command line (release build) with the same GPU driver setup as the tests
# (tools/env.sh): `tools/run.sh generate --prompt "a large red circle at the center"`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo not found. Install Rust (https://rustup.rs), version 1.85 or newer." >&2
    exit 1
fi
# shellcheck disable=SC1091
. tools/env.sh
exec cargo run --release --quiet -- "$@"

#!/usr/bin/env bash
# The project's test command (README). Works on a fresh Debian machine with no GPU: it installs
# Mesa's software Vulkan driver when needed (as root) and runs, on the same driver setup as
# tools/run.sh (tools/env.sh):
#   1. the gates: rustfmt, clippy (warnings denied), rustdoc (warnings denied);
#   2. the whole test suite (which builds the examples too);
#   3. two examples on the built-in demo model (generate, prune_masks).
# Extra arguments go to `cargo test` (e.g. `tools/test.sh --test kernels`); ATEDM_TEST_QUICK=1
# skips the gates and the examples.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found. Install Rust (https://rustup.rs), version 1.85 or newer." >&2
    exit 1
fi
# shellcheck disable=SC1091
. tools/env.sh

# One build for everything, the viewer included (feature `viewer`: tests/viewer.rs renders its UI
# offscreen on the same adapter). The viewer's eframe 0.37 needs Rust 1.95: older toolchains, or
# ATEDM_TEST_NO_VIEWER=1, test without it.
features=(--features viewer)
rust_minor=$(rustc --version | sed -nE 's/^rustc 1\.([0-9]+).*/\1/p')
if [ -n "${ATEDM_TEST_NO_VIEWER:-}" ]; then
    features=()
elif [ -z "$rust_minor" ] || [ "$rust_minor" -lt 95 ]; then
    echo "test.sh: $(rustc --version) is older than 1.95: testing without the viewer" >&2
    features=()
fi

step() { echo "test.sh: $*" >&2; }
if [ -z "${ATEDM_TEST_QUICK:-}" ]; then
    # rustfmt and clippy come with rustup's default profile; a minimal toolchain lacks them
    # (`rustup component add rustfmt clippy`), and the gate says so instead of failing.
    if cargo fmt --version >/dev/null 2>&1; then
        step "cargo fmt --check"
        cargo fmt --all --check
    else
        step "rustfmt is not installed: formatting not checked"
    fi
    if cargo clippy --version >/dev/null 2>&1; then
        step "cargo clippy (warnings denied)"
        cargo clippy --locked --all-targets ${features[@]+"${features[@]}"} -- -D warnings
    else
        step "clippy is not installed: lints not checked"
    fi
    step "cargo doc (warnings denied)"
    RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps ${features[@]+"${features[@]}"}
fi
step "cargo test"
cargo test --locked ${features[@]+"${features[@]}"} "$@"
if [ -z "${ATEDM_TEST_QUICK:-}" ] && [ $# -eq 0 ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
    step "examples on the demo model"
    cargo run --locked --quiet --example generate -- "a large cyan circle at the top left" "$out/generate.png"
    cargo run --locked --quiet --example prune_masks -- "$out/mask.png"
    test -s "$out/generate.png" && test -s "$out/mask.png"
    echo "examples: 2 passed, 0 failed"
fi

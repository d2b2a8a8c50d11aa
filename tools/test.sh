#!/usr/bin/env bash
# The project's test command (README). Works on a fresh Debian machine with no GPU: it installs
# Mesa's software Vulkan driver when needed (as root), then runs the whole test suite on it.
# Extra arguments go to `cargo test` (e.g. `tools/test.sh --test ops_matmul`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found. Install Rust (https://rustup.rs), version 1.85 or newer." >&2
    exit 1
fi
tools/ensure-vulkan.sh
# Without a GPU on Debian 12, test on Mesa 25's lavapipe (4-8x faster kernels than bookworm's
# Mesa 22), fetched into a cache without installing anything; otherwise the system driver.
if env_file=$(tools/fast-lavapipe.sh); then
    # shellcheck disable=SC1090
    . "$env_file"
fi

# Mesa's loader complains on stderr when XDG_RUNTIME_DIR is unset (headless machines, CI).
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/atedm-xdg-$(id -u)"
    mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
fi

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
cargo test --locked ${features[@]+"${features[@]}"} "$@"

# Sourced by tools/run.sh and tools/test.sh (`. tools/env.sh`): the same GPU driver setup for
# running the engine and for testing it.
# - Makes sure a Vulkan driver is present (tools/ensure-vulkan.sh installs Mesa's software
#   Vulkan as root on Debian/Ubuntu when there is none).
# - Without a GPU on Debian 12, points the Vulkan loader at Mesa 25's lavapipe
#   (tools/fast-lavapipe.sh: 4-8x faster kernels than bookworm's Mesa 22; nothing installed).
# - Gives Mesa's loader an XDG_RUNTIME_DIR on headless machines (it complains on stderr without).
_atedm_tools="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$_atedm_tools/ensure-vulkan.sh"
if _atedm_env=$("$_atedm_tools/fast-lavapipe.sh"); then
    # shellcheck disable=SC1090
    . "$_atedm_env"
fi
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/atedm-xdg-$(id -u)"
    mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
fi
unset _atedm_tools _atedm_env

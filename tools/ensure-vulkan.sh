#!/usr/bin/env bash
# Makes sure a Vulkan driver is present (Linux). With none, installs Mesa's software Vulkan
# (lavapipe, package mesa-vulkan-drivers) when running as root with apt-get; otherwise stops
# with the exact package to install. On macOS (Metal) and Windows (DX12) there is nothing to do.
set -euo pipefail

[ "$(uname -s)" = "Linux" ] || exit 0

have_driver() {
    # A Vulkan loader and at least one installable client driver (ICD) manifest.
    # grep reads all of ldconfig's output (no -q): with pipefail, grep -q exiting early could
    # kill ldconfig with SIGPIPE and fail the pipeline although the library is there.
    { ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null; } || return 1
    compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null \
        || compgen -G "/etc/vulkan/icd.d/*.json" >/dev/null \
        || compgen -G "/usr/local/share/vulkan/icd.d/*.json" >/dev/null
}

if have_driver; then
    exit 0
fi

echo "ensure-vulkan: no Vulkan driver found." >&2
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-vulkan: installing Mesa's software Vulkan driver (mesa-vulkan-drivers, libvulkan1)." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 >/dev/null
    have_driver && exit 0
    echo "ensure-vulkan: installation finished but no Vulkan driver is visible." >&2
    exit 1
fi
cat >&2 <<'MSG'
ensure-vulkan: no GPU driver, and this script cannot install one (not root, or no apt-get).
Install Mesa's software Vulkan driver, then run again:
    sudo apt-get install mesa-vulkan-drivers libvulkan1
(or your GPU vendor's Vulkan driver).
MSG
exit 1

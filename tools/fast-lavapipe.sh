#!/usr/bin/env bash
# A newer lavapipe for machines without a GPU, without touching the system: on Debian 12
# (bookworm, x86_64) whose Mesa is older than 24, downloads Mesa 25's software Vulkan driver and
# the libdrm it needs from bookworm-backports into a cache folder (no root needed, nothing
# installed), and prints the path of a shell file that points the Vulkan loader at it:
#
#     if env=$(tools/fast-lavapipe.sh); then . "$env"; fi
#
# Why: Mesa 22.3's lavapipe runs the engine's kernels 4-8x slower than Mesa 25's (matmul 512^3,
# 8x8 register blocks, one run side by side: 0.87 vs 6.77 GFLOP/s), which makes the tests and the
# benchmarks on CPU-only machines correspondingly slower.
#
# Prints nothing and exits 1 (the caller keeps the system driver) when: not Linux/x86_64/bookworm,
# a GPU is present (/dev/dri render nodes or /dev/nvidia0: VK_ICD_FILENAMES would hide it),
# VK_ICD_FILENAMES is already set, ATEDM_SYSTEM_VULKAN=1, the system Mesa is 24 or newer, or the
# download fails. Cache: ${ATEDM_CACHE:-$HOME/.cache/atedm}/lavapipe-<version>.
set -euo pipefail

MESA_VERSION="25.0.7-2~bpo12+1"
say() { echo "fast-lavapipe: $*" >&2; }

[ "$(uname -s)" = "Linux" ] && [ "$(uname -m)" = "x86_64" ] || exit 1
[ -z "${VK_ICD_FILENAMES:-}" ] && [ -z "${VK_DRIVER_FILES:-}" ] || exit 1
[ "${ATEDM_SYSTEM_VULKAN:-}" != "1" ] || exit 1
compgen -G "/dev/dri/renderD*" >/dev/null && exit 1
[ -e /dev/nvidia0 ] && exit 1
# shellcheck disable=SC1091
. /etc/os-release 2>/dev/null || exit 1
[ "${VERSION_CODENAME:-}" = "bookworm" ] || exit 1
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || exit 1
system=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
if [ -n "$system" ] && dpkg --compare-versions "$system" ge 24; then
    exit 1
fi

cache="${ATEDM_CACHE:-$HOME/.cache/atedm}/lavapipe-${MESA_VERSION//[~+]/_}"
env_file="$cache/env.sh"
if [ -f "$env_file" ]; then
    echo "$env_file"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
echo "deb http://deb.debian.org/debian bookworm-backports main" >"$tmp/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$tmp/sources.list" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::archives=$tmp/archives"
          -o "Debug::NoLocking=1" -o "APT::Sandbox::User=$(id -un)")
say "downloading Mesa $MESA_VERSION's lavapipe from bookworm-backports (system Mesa: ${system:-none})"
if ! apt-get "${apt_opts[@]}" -qq update >/dev/null 2>&1; then
    say "could not reach bookworm-backports; keeping the system driver"
    exit 1
fi
cand() { apt-cache "${apt_opts[@]}" policy "$1" | awk '/Candidate:/ {print $2}'; }
drm=$(cand libdrm2)
drm_amd=$(cand libdrm-amdgpu1)
if ! (cd "$tmp" && apt-get "${apt_opts[@]}" -qq download "mesa-vulkan-drivers=$MESA_VERSION" \
        "libdrm2=$drm" "libdrm-amdgpu1=$drm_amd" >/dev/null 2>&1); then
    say "download failed; keeping the system driver"
    exit 1
fi
mkdir -p "$tmp/root"
for deb in "$tmp"/*.deb; do
    dpkg-deb -x "$deb" "$tmp/root"
done
lib="$tmp/root/usr/lib/x86_64-linux-gnu"
[ -f "$lib/libvulkan_lvp.so" ] || { say "no libvulkan_lvp.so in the package"; exit 1; }
mkdir -p "$cache"
rm -rf "$cache/lib"
cp -a "$lib" "$cache/lib"
cat >"$cache/lvp_icd.json" <<JSON
{
    "ICD": {
        "api_version": "1.4.305",
        "library_path": "$cache/lib/libvulkan_lvp.so"
    },
    "file_format_version": "1.0.0"
}
JSON
cat >"$env_file.tmp" <<ENV
# Written by tools/fast-lavapipe.sh: Mesa $MESA_VERSION lavapipe (bookworm-backports).
export VK_ICD_FILENAMES="$cache/lvp_icd.json"
export LD_LIBRARY_PATH="$cache/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
mv "$env_file.tmp" "$env_file"
say "using $cache"
echo "$env_file"

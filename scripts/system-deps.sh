#!/usr/bin/env bash
# Install the system libraries that napari's OpenGL canvas needs to run under Xvfb
# (the GUI tests use pytest-xvfb). Debian/Ubuntu; needs root. Does nothing if present.
set -euo pipefail
pkgs=(xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0
      libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-cursor0 libegl1 libgl1 libdbus-1-3 libfontconfig1)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "GUI tests need: ${missing[*]}" >&2
  echo "install them (sudo apt-get install ${missing[*]}) or the GUI tests will be skipped" >&2
  [ -n "${CI:-}" ] && exit 1
  exit 0
fi
echo "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

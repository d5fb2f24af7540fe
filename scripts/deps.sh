#!/usr/bin/env bash
# Installs the Debian packages qwenq builds with, if any is missing (needs root or sudo).
set -euo pipefail
PKGS="cmake ninja-build g++ ccache libeigen3-dev libcli11-dev nlohmann-json3-dev libgtest-dev libbenchmark-dev libomp-dev python3-venv"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "deps: installing$missing"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
else
  echo "deps: all Debian packages present"
fi

#!/usr/bin/env bash
# Installs the Debian packages tapegrad needs, only those that are missing.
# Usage: scripts/setup.sh [extra-package ...]
set -euo pipefail

packages=(build-essential meson ninja-build pkg-config libxsmm-dev check zlib1g-dev libjansson-dev
          doxygen "$@")
# ONNX export (protobuf-c code generated from Debian's onnx.proto) and mnist_predict's PNG reader.
packages+=(libprotobuf-c-dev protobuf-c-compiler libonnx-dev libpng-dev)
# Data-parallel training (the mpi feature): Open MPI and its mpirun.
packages+=(libopenmpi-dev openmpi-bin)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "setup: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "setup: run as root, or install: ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

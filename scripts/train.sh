#!/usr/bin/env bash
# Installs what is missing, fetches MNIST, builds tapegrad and trains the MNIST CNN.
# Usage: scripts/train.sh [mnist_cnn flags ...]   (default: the reference model, 3 epochs)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/fetch_mnist.sh data/mnist
if [ -d build ]; then
    meson setup --reconfigure build >/dev/null
else
    meson setup build >/dev/null
fi
ninja -C build
exec build/examples/mnist_cnn --data data/mnist "$@"

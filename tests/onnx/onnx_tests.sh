#!/usr/bin/env bash
# ONNX export checked by others' code (suite 'onnx'), run by `meson test`.
# Usage: onnx_tests.sh MNIST_CNN ONNX_LOGITS DATA_DIR MODEL
#        onnx_tests.sh layers ONNX_LAYERS
#        onnx_tests.sh predict MNIST_CNN MNIST_PREDICT DATA_DIR
#   Trains MODEL (reference or seed) briefly through compiled plans, saves a checkpoint and
#   exports it with --export-onnx after training (seed: also from the checkpoint with --load
#   --eval-only; the two files must be identical); gets tapegrad's own logits for the test
#   set (onnx_logits) and runs check_onnx.py: onnx.checker (full check), the operator list,
#   OpenCV's DNN module on the 10,000 test images (logits to 1e-4 relative, same accuracy).
#   layers: a model of strided padded convolution, padded and overlapping pooling and batch
#   norm (onnx_layers) exported and run by OpenCV on a random input: same output to 1e-4.
#   predict: the seed model trained for 400 steps (not scaled: the check needs a model that
#   has learned), then check_predict.py feeds mnist_predict MNIST test digits written as PNG
#   and PGM files of other sizes, types and polarities, and files that are not images.
# Exits 77 (skipped) without MNIST, or without /usr/bin/python3's onnx and cv2 modules
# (Debian's python3-onnx and python3-opencv; scripts/test.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python_ok() { /usr/bin/python3 -c 'import onnx, cv2' 2>/dev/null; }
if [ "$1" = layers ]; then
    python_ok || { echo "/usr/bin/python3 has no onnx or cv2 module: skipped"; exit 77; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$2" "$work"
    exec /usr/bin/python3 "$here/check_layers.py" "$work"
fi
if [ "$1" = predict ]; then
    python_ok || { echo "/usr/bin/python3 has no onnx or cv2 module: skipped"; exit 77; }
    [ -f "$4/t10k-images-idx3-ubyte" ] || { echo "MNIST is not in $4: skipped"; exit 77; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$2" --data "$4" --model seed --max-steps 400 --save "$work/ck" >/dev/null
    exec /usr/bin/python3 "$here/check_predict.py" "$3" "$work/ck" "$4" "$work"
fi
bin=$1 logits_bin=$2 data=$3 model=$4
if [ ! -f "$data/t10k-images-idx3-ubyte" ] && [ ! -f "$data/t10k-images-idx3-ubyte.gz" ]; then
    echo "MNIST is not in $data (scripts/fetch_mnist.sh fetches it): skipped"
    exit 77
fi
if ! python_ok; then
    echo "/usr/bin/python3 has no onnx or cv2 module (apt-get install python3-onnx python3-opencv): skipped"
    exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
die() { echo "FAILED: $*"; exit 1; }

case $model in
reference) ops=Conv,Relu,MaxPool,Conv,Relu,MaxPool,Flatten,Gemm,Relu,Gemm ;;
seed) ops=Conv,Relu,AveragePool,Conv,Relu,AveragePool,Flatten,Gemm ;;
*) die "unknown model $model" ;;
esac
# TG_TEST_STEPS_SCALE (scripts/test.sh sets 0.2 under the sanitizers) shortens the training.
steps=$(awk -v s="${TG_TEST_STEPS_SCALE:-1}" 'BEGIN { n = int(200 * s); print n < 20 ? 20 : n }')
"$bin" --data "$data" --model "$model" --max-steps "$steps" --save "$work/ck" \
    --export-onnx "$work/trained.onnx" >"$work/train.out" || { cat "$work/train.out"; die "training"; }
grep "^exported" "$work/train.out"
# The export from a checkpoint (the same code for both models; the seed model's is the cheap
# one, which matters under the sanitizers: each mnist_cnn run evaluates the whole test set).
if [ "$model" = seed ]; then
    "$bin" --data "$data" --model "$model" --load "$work/ck" --eval-only \
        --export-onnx "$work/loaded.onnx" >"$work/eval.out" ||
        { cat "$work/eval.out"; die "export from the checkpoint"; }
    cmp "$work/trained.onnx" "$work/loaded.onnx" ||
        die "the export after training differs from the export of its checkpoint"
    echo "the export from the checkpoint is identical to the export after training"
fi
acc=$("$logits_bin" "$work/ck" "$data" "$work/logits.f32" | sed -n 's/^tapegrad_acc=//p')
[ -n "$acc" ] || die "onnx_logits gave no accuracy"
/usr/bin/python3 "$here/check_onnx.py" "$work/trained.onnx" "$work/logits.f32" "$data" "$ops" "$acc"

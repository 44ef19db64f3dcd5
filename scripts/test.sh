#!/usr/bin/env bash
# Installs what is missing, fetches MNIST (the end-to-end tests train on it), builds tapegrad
# and runs `meson test`: first an optimized build, then the same suite under AddressSanitizer,
# LeakSanitizer and UndefinedBehaviorSanitizer; then fuzzes the file readers for a minute each.
# Usage: scripts/test.sh [--quick]   (--quick: the optimized build only)
set -euo pipefail
cd "$(dirname "$0")/.."

# Test-only tools: clang and its runtime for the sanitizer and fuzzing builds; python3-onnx
# validates exported files and python3-opencv runs them (suite onnx); libdnnl-dev lets
# bench/conv_bn --quick check oneDNN's block against ours (suite bench).
scripts/setup.sh clang libclang-rt-14-dev python3-onnx python3-opencv libdnnl-dev
scripts/fetch_mnist.sh data/mnist

configure() { # dir, options...
    local dir=$1
    shift
    if [ -d "$dir" ]; then
        meson setup --reconfigure "$dir" "$@" >/dev/null
    else
        meson setup "$dir" "$@" >/dev/null
    fi
}

echo "== optimized build: meson test"
configure build
ninja -C build
meson test -C build --print-errorlogs

if [ "${1:-}" = "--quick" ]; then
    exit 0
fi

echo "== address and undefined-behaviour sanitizers: meson test"
configure build-sanitize -Db_sanitize=address,undefined -Dbuildtype=debugoptimized
ninja -C build-sanitize
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# The end-to-end checks train for fewer steps here: the sanitizers look for memory errors,
# which a short run finds as well as a long one, at a tenth of the time.
export TG_TEST_STEPS_SCALE=0.2
meson test -C build-sanitize --print-errorlogs --timeout-multiplier 4

echo "== fuzzing the IDX reader and the checkpoint loader (libFuzzer, ASan, UBSan)"
scripts/fuzz.sh "${FUZZ_SECONDS:-60}"

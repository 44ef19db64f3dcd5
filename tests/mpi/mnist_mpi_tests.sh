#!/usr/bin/env bash
# examples/mnist_cnn under mpirun (2 ranks) against one process, on real MNIST.
# Usage: mnist_mpi_tests.sh MPIRUN_SH MNIST_CNN DATA_DIR COMPARE_CHECKPOINTS CHECK
#   sync-bn  with --sync-bn, 2 ranks at global batch 64 follow 1 process at batch 64: the same
#            losses and, after 1 step and 3 (the winograd pass off), the same parameters,
#            momenta and running estimates to f32 rounding (the bound is the one between
#            compiled and eager runs of one process: the sums are reordered, see
#            docs/distributed.md); per-rank batch norm does not (shows the comparison can fail)
#   resume   a checkpoint of 2 ranks resumed by 1 and one of 1 resumed by 2 follow the
#            uninterrupted run (the winograd pass off); 2 ranks resumed by 2 are bit-identical
#            to it, with every pass too
#   kill     a short 2-rank run ends normally; then kill -9 of rank 1 mid-run: mpirun exits non-zero within seconds, naming the rank,
#            and the last checkpoint (written by rank 0) loads and evaluates
# Exits 77 (skipped) without MNIST or MPI.
set -euo pipefail
mpirun_sh=$1 bin=$2 data=$3 compare=$4 check=$5
if [ ! -f "$data/train-images-idx3-ubyte" ] || [ ! -f "$data/t10k-images-idx3-ubyte" ]; then
    echo "MNIST is not in $data (scripts/fetch_mnist.sh fetches it): skipped"
    exit 77
fi
command -v mpirun >/dev/null || { echo "mpirun is not installed: skipped"; exit 77; }
# The sanitizer pass (TG_TEST_STEPS_SCALE < 1) keeps the kill check, which trains and saves
# under MPI; the other two are numerical comparisons of 5 to 9 runs each, whose code (the
# collectives in plans, synchronized batch norm) mpi_primitive also runs there.
if [ "$check" != kill ] && awk -v s="${TG_TEST_STEPS_SCALE:-1}" 'BEGIN { exit !(s < 1) }'; then
    echo "a numerical comparison of several runs: not repeated in the sanitizer pass: skipped"
    exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The training set, and the first 1000 test images: every run ends with an evaluation, and
# 10000 images would take most of these tests' time.
mkdir "$work/data"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte; do
    ln -s "$(cd "$data" && pwd)/$f" "$work/data/$f"
done
{ printf '\x00\x00\x08\x03\x00\x00\x03\xe8\x00\x00\x00\x1c\x00\x00\x00\x1c'
  dd if="$data/t10k-images-idx3-ubyte" bs=64K iflag=skip_bytes,count_bytes skip=16 count=784000 status=none; } >"$work/data/t10k-images-idx3-ubyte"
{ printf '\x00\x00\x08\x01\x00\x00\x03\xe8'
  dd if="$data/t10k-labels-idx1-ubyte" bs=64K iflag=skip_bytes,count_bytes skip=8 count=1000 status=none; } >"$work/data/t10k-labels-idx1-ubyte"
data=$work/data
common=(--data "$data" --model reference --batch 64 --seed 4)
one() { "$bin" "${common[@]}" "$@"; }
two() { "$mpirun_sh" -np 2 "$bin" "${common[@]}" "$@"; }
value() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" | tail -1; }
die() { echo "FAILED: $*"; exit 1; }
# compare A B TOL: prints the largest difference; fails above TOL
within() { "$compare" "$1" "$2" "$3" || die "$4"; }

case $check in
sync-bn)
    # 1 step with every pass; 3 steps with the winograd pass off. The two orders of the
    # sums part by rounding, which ReLU's and max pool's kinks amplify as training goes on:
    # F(5x5) in conv2's forward rounds worse than a direct convolution and flips more of them,
    # 1.9e-3 and 2.5e-3 after 3 steps at seeds 3 and 4 against 2-4e-7 with direct
    # convolutions (kernels/winograd.c; after 1 step 6e-7 either way). The collectives and
    # the synchronized batch norm this test is about are the same nodes either way.
    for steps in 1 3; do
        passes=$([ $steps = 1 ] && echo "" || echo winograd)
        TG_DISABLE_PASSES=$passes one --max-steps $steps --save "$work/one$steps.ckpt" \
            >"$work/one.out"
        TG_DISABLE_PASSES=$passes two --max-steps $steps --sync-bn --save "$work/two.ckpt" \
            >"$work/two.out"
        l1=$(value final_loss <"$work/one.out") l2=$(value final_loss <"$work/two.out")
        echo "after $steps step(s): loss 1 process $l1, 2 ranks $l2"
        [ "$l1" = "$l2" ] || die "the losses differ after $steps steps"
        # 1 step: 6e-7 measured (compiled against eager in one process: 8.5e-6); 3 steps:
        # 2.3e-7 (1.8e-4 measured in earlier sessions, with other kernels)
        tol=$([ $steps = 1 ] && echo 3e-5 || echo 1e-3)
        within "$work/one$steps.ckpt" "$work/two.ckpt" $tol "2 ranks differ from 1 process after $steps steps"
    done
    two --max-steps 1 --save "$work/per-rank.ckpt" >/dev/null
    if "$compare" "$work/one1.ckpt" "$work/per-rank.ckpt" 3e-5 >/dev/null; then
        die "per-rank batch norm matched the whole batch's: the comparison cannot fail"
    fi
    echo "per-rank batch norm differs after 1 step, as it must: $("$compare" "$work/one1.ckpt" "$work/per-rank.ckpt" 3e-5 || true)"
    ;;
resume)
    # 2 steps, saved, then 2 more, at another rank count; against 4 steps straight. (The
    # difference is the rounding of the first steps, amplified by the kinks: 3.7e-7 measured
    # with direct convolutions, 2.1e-3 with F(5x5) in conv2's forward, so these runs have the
    # winograd pass off, as sync-bn's 3 steps.)
    export TG_DISABLE_PASSES=winograd
    two --sync-bn --max-steps 2 --save "$work/two2.ckpt" >/dev/null
    one --max-steps 4 --load "$work/two2.ckpt" --save "$work/two2-one4.ckpt" >/dev/null
    one --max-steps 4 --save "$work/one4.ckpt" >/dev/null
    within "$work/one4.ckpt" "$work/two2-one4.ckpt" 3e-3 "2 ranks -> 1 does not follow 1 process"
    one --max-steps 2 --save "$work/one2.ckpt" >/dev/null
    two --sync-bn --max-steps 4 --load "$work/one2.ckpt" --save "$work/one2-two4.ckpt" >/dev/null
    two --sync-bn --max-steps 4 --save "$work/two4.ckpt" >/dev/null
    within "$work/two4.ckpt" "$work/one2-two4.ckpt" 3e-3 "1 rank -> 2 does not follow 2 ranks"
    two --sync-bn --max-steps 4 --load "$work/two2.ckpt" --save "$work/two2-two4.ckpt" >/dev/null
    cmp "$work/two4.ckpt" "$work/two2-two4.ckpt" || die "2 ranks resumed by 2 differ from 2 ranks straight"
    # The same with every pass: the same order of the sums, so still to the bit.
    unset TG_DISABLE_PASSES
    two --sync-bn --max-steps 2 --save "$work/all2.ckpt" >/dev/null
    two --sync-bn --max-steps 4 --save "$work/all4.ckpt" >/dev/null
    two --sync-bn --max-steps 4 --load "$work/all2.ckpt" --save "$work/all2-4.ckpt" >/dev/null
    cmp "$work/all4.ckpt" "$work/all2-4.ckpt" ||
        die "2 ranks resumed by 2 differ from 2 ranks straight (every pass)"
    export TG_DISABLE_PASSES=winograd
    # A resume that lost its place in the data (another seed's order) is far off: the
    # tolerance above can fail.
    one --max-steps 4 --seed 5 --load "$work/two2.ckpt" --save "$work/wrong.ckpt" >/dev/null
    if "$compare" "$work/one4.ckpt" "$work/wrong.ckpt" 3e-3; then
        die "a resume with another data order passed the comparison"
    fi
    echo "resume: 2 -> 1 and 1 -> 2 ranks follow the straight runs; 2 -> 2 is bit-identical"
    ;;
kill)
    # First a run that ends normally (under the sanitizers: no leak on the MPI paths).
    two --max-steps 3 >"$work/ok.out" || die "2 ranks did not train 3 steps"
    grep -q "^ranks=2 " "$work/ok.out" || die "the run did not report 2 ranks"
    ckpt=$work/run.ckpt
    "$mpirun_sh" -np 2 "$bin" "${common[@]}" --max-steps 100000 --save-every 5 \
        --save "$ckpt" >"$work/out" 2>"$work/err" &
    launcher=$!
    for _ in $(seq 600); do [ -f "$ckpt" ] && break; sleep 0.1; done
    [ -f "$ckpt" ] || { kill "$launcher"; die "no checkpoint after 60 s"; }
    sleep 1
    # Rank 1: the process under the launcher whose environment says so (from /proc: no
    # procps needed).
    children() { for st in /proc/[0-9]*/stat; do
                     read -r pid _ _ ppid _ <"$st" 2>/dev/null && [ "$ppid" = "$1" ] && echo "$pid"
                 done 2>/dev/null || true; }
    victim=
    for pid in $(for c in $(children "$launcher"); do echo "$c"; children "$c"; done); do
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then
            victim=$pid
        fi
    done
    if [ -z "$victim" ]; then
        # What there was to find, for the next one to read: the launcher's state, its
        # children, and what the run said (it failed once in CI, and never since).
        state=$(cut -d' ' -f3 "/proc/$launcher/stat" 2>/dev/null || true)
        echo "launcher $launcher: state ${state:-gone}"
        for pid in $(for c in $(children "$launcher"); do echo "$c"; children "$c"; done); do
            rank=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep '^OMPI_COMM_WORLD_RANK=' ||
                   echo "no rank readable")
            echo "  process $pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo gone)): $rank"
        done
        echo "the run said:"; tail -n 5 "$work/out" "$work/err" 2>/dev/null || true
        kill "$launcher" 2>/dev/null || true
        die "rank 1's process not found"
    fi
    killed_at=$(date +%s%N)
    kill -9 "$victim"
    status=0
    wait "$launcher" || status=$?
    took=$(awk -v a="$killed_at" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    echo "mpirun exited with status $status $took s after rank 1 was killed; it said:"
    grep -v '^ *$' "$work/err" | grep -iv "img/s" | tail -8
    [ "$status" -ne 0 ] || die "mpirun exited 0 after a rank was killed"
    awk -v t="$took" 'BEGIN { exit !(t < 10) }' || die "the other rank took $took s to stop"
    grep -q "rank 1" "$work/err" || die "the error does not name the killed rank"
    "$bin" --data "$data" --model reference --load "$ckpt" --eval-only >"$work/eval.out" ||
        die "the last checkpoint does not load"
    echo "the last checkpoint loads: test_acc=$(value test_acc <"$work/eval.out")"
    ;;
*)
    die "unknown check $check"
    ;;
esac

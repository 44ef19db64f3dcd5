#!/usr/bin/env bash
# End-to-end checks of examples/mnist_cnn on real MNIST, run by `meson test` (suite 'mnist').
# Usage: example_tests.sh MNIST_CNN DATA_DIR CHECK [COMPARE_CHECKPOINTS]
#   smoke        a few hundred steps of the reference model: the loss falls, accuracy > 90%
#   resume       N steps, save, resume for M more == N + M steps straight: identical checkpoints
#   determinism  the same seed twice, and 1 vs 2 threads: identical losses and checkpoints
#   nan-guard    a diverging run with --check-finite stops naming the op; the last checkpoint
#                still loads
#   checkpoint   evaluating a saved checkpoint gives the accuracy printed at save time; one of
#                the other model, or a damaged one, is refused with a clear message
#   compiled-vs-eager  300 steps of the reference model through compiled plans and eagerly:
#                identical state without the passes that reorder arithmetic; with all of
#                them, the same loss trajectory and accuracy, and the same state after 3 steps
# (Runs are compiled, the default, except where --eager is given.)
# Exits 77 (skipped) when MNIST has not been fetched (scripts/fetch_mnist.sh).
set -euo pipefail
bin=$1 data=$2 check=$3 compare=${4:-}
if [ ! -f "$data/train-images-idx3-ubyte" ] && [ ! -f "$data/train-images-idx3-ubyte.gz" ]; then
    echo "MNIST is not in $data (scripts/fetch_mnist.sh fetches it): skipped"
    exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() { "$bin" --data "$data" "$@"; }
value() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" | tail -1; }
die() { echo "FAILED: $*"; exit 1; }

case $check in
smoke)
    run --model reference --max-steps 300 --seed 3 >"$work/out"
    cat "$work/out"
    first=$(grep -m1 '^epoch 1 step 100/' "$work/out" | sed 's/.* loss \([^ ]*\).*/\1/')
    last=$(grep '^epoch 1 step 300/' "$work/out" | sed 's/.* loss \([^ ]*\).*/\1/')
    acc=$(value test_acc <"$work/out")
    final=$(value final_loss <"$work/out")
    echo "mean loss over steps 1-100: $first, over 1-300: $last; last batch $final; test_acc $acc"
    awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' || die "the loss did not fall"
    awk -v f="$final" 'BEGIN { exit !(f < 0.7) }' || die "final loss $final is not below 0.7"
    awk -v t="$acc" 'BEGIN { exit !(t > 90) }' || die "test accuracy $acc is not above 90%"
    ;;
resume)
    # 500 + 200 steps cross the end of the first epoch (600 steps of 100).
    run --model seed --seed 5 --max-steps 500 --save "$work/first.ckpt" >/dev/null
    run --model seed --seed 5 --max-steps 700 --load "$work/first.ckpt" \
        --save "$work/resumed.ckpt" >"$work/resumed.out"
    run --model seed --seed 5 --max-steps 700 --save "$work/straight.ckpt" >"$work/straight.out"
    cmp "$work/resumed.ckpt" "$work/straight.ckpt" ||
        die "resumed and uninterrupted checkpoints differ"
    [ "$(value final_loss <"$work/resumed.out")" = "$(value final_loss <"$work/straight.out")" ] ||
        die "final losses differ"
    echo "resume: 500 + 200 steps == 700 steps, checkpoints identical ($(stat -c %s "$work/straight.ckpt") bytes)"
    ;;
determinism)
    for t in 1 1 2; do
        run --model seed --seed 9 --max-steps 250 --threads $t --save "$work/t$t.ckpt" |
            grep -v img/s >"$work/run.$t.out" || true
        cp "$work/t$t.ckpt" "$work/last.ckpt"
        if [ -f "$work/first.ckpt" ]; then
            cmp "$work/first.ckpt" "$work/last.ckpt" || die "checkpoints differ (threads $t)"
        else
            cp "$work/last.ckpt" "$work/first.ckpt"
        fi
        value final_loss <"$work/run.$t.out" >>"$work/losses"
    done
    [ "$(sort -u "$work/losses" | wc -l)" -eq 1 ] || die "final losses differ: $(tr '\n' ' ' <"$work/losses")"
    echo "determinism: 3 runs (1, 1 and 2 threads) gave identical checkpoints and loss $(head -1 "$work/losses")"
    ;;
nan-guard)
    set +e
    run --model seed --lr 1e30 --max-steps 50 --check-finite --save "$work/x.ckpt" \
        --save-every 1 >"$work/out" 2>"$work/err"
    status=$?
    set -e
    cat "$work/err"
    [ $status -ne 0 ] || die "a diverging run exited 0"
    grep -q "produced \(inf\|nan\) at element .* in 'block" "$work/err" ||
        die "the message does not name the op and the layer"
    run --model seed --eval-only --load "$work/x.ckpt" >"$work/eval" ||
        die "the last good checkpoint does not load"
    echo "nan-guard: stopped with the message above; the last checkpoint loads: $(tail -1 "$work/eval")"
    ;;
checkpoint)
    run --model seed --seed 4 --max-steps 300 --save "$work/seed.ckpt" >"$work/train.out"
    run --model seed --eval-only --load "$work/seed.ckpt" >"$work/eval.out"
    trained=$(value test_acc <"$work/train.out") evaluated=$(value test_acc <"$work/eval.out")
    [ "$trained" = "$evaluated" ] || die "test_acc $trained at save time, $evaluated after loading"
    set +e
    run --model reference --eval-only --load "$work/seed.ckpt" >/dev/null 2>"$work/other.err"
    other=$?
    cp "$work/seed.ckpt" "$work/damaged.ckpt"
    size=$(stat -c %s "$work/damaged.ckpt")
    printf '\x55' | dd of="$work/damaged.ckpt" bs=1 seek=$((size - 100)) conv=notrunc 2>/dev/null
    run --model seed --eval-only --load "$work/damaged.ckpt" >/dev/null 2>"$work/damaged.err"
    damaged=$?
    head -c 1000 "$work/seed.ckpt" >"$work/truncated.ckpt"
    run --model seed --eval-only --load "$work/truncated.ckpt" >/dev/null 2>"$work/truncated.err"
    truncated=$?
    set -e
    cat "$work/other.err" "$work/damaged.err" "$work/truncated.err"
    [ $other -ne 0 ] && grep -q "holds the 'seed' model" "$work/other.err" ||
        die "a checkpoint of the other model was not refused clearly"
    [ $damaged -ne 0 ] && grep -qi "crc\|checksum" "$work/damaged.err" ||
        die "a damaged checkpoint was not refused by its checksum"
    [ $truncated -ne 0 ] || die "a truncated checkpoint was accepted"
    echo "checkpoint: test_acc $trained at save time and after loading; other model, damaged and truncated files refused"
    ;;
compiled-vs-eager)
    # With the passes that reorder arithmetic switched off (convolution lowering, fusion,
    # scale folding), a compiled run computes exactly what eager does: 300 steps must give
    # identical checkpoints (parameters, running estimates, optimizer state) and losses.
    # With every pass, f32 sums run in another order; relu and max-pool kinks then amplify
    # 1e-6 differences to 1e-3 within ten steps, so the check there is on the state after 3
    # steps, the loss trajectory and the accuracy.
    exact="lower_conv,fuse,fold_scale"
    # TG_TEST_STEPS_SCALE (scripts/test.sh sets 0.2 under the sanitizers) shortens the runs.
    steps=$(awk -v s="${TG_TEST_STEPS_SCALE:-1}" 'BEGIN { print int(300 * s) }')
    run --model reference --seed 6 --max-steps $steps --eager --save "$work/eager.ckpt" >"$work/eager.out"
    TG_DISABLE_PASSES=$exact run --model reference --seed 6 --max-steps $steps \
        --save "$work/exact.ckpt" >"$work/exact.out"
    cmp "$work/eager.ckpt" "$work/exact.ckpt" ||
        die "compiled without reordering passes differs from eager after $steps steps"
    run --model reference --seed 6 --max-steps $steps --save "$work/all.ckpt" >"$work/all.out"
    losses() { grep '^epoch 1 step' "$1" | sed 's/.* loss \([^ ]*\).*/\1/'; }
    paste <(losses "$work/eager.out") <(losses "$work/exact.out") <(losses "$work/all.out") |
        tee "$work/losses"
    awk '{ if ($1 != $2) bad = 1; d = $3 - $1; if (d < 0) d = -d; if (d > 0.03 * $1) bad = 1 }
         END { exit bad }' "$work/losses" || die "the loss trajectories differ"
    for mode in eager all; do
        flag=; [ $mode = eager ] && flag=--eager
        run --model reference --seed 6 --max-steps 3 --shift 0 $flag --save "$work/$mode.3.ckpt" >/dev/null
    done
    "$compare" "$work/eager.3.ckpt" "$work/all.3.ckpt" 1e-4 ||
        die "after 3 steps, parameters, running estimates or optimizer state differ"
    # The accuracy after 300 steps moves with the order of the sums alone: at this seed
    # 98.30 eager, 98.19 and 97.67 compiled with two orders of a tile's float sums (98.5-98.7
    # at seeds 1-5, within 0.16 of each other). Hence 1.0: a wrong gradient fails the two
    # checks above long before it costs a point of accuracy.
    acc_e=$(value test_acc <"$work/eager.out") acc_c=$(value test_acc <"$work/all.out")
    awk -v a="$acc_c" -v b="$acc_e" 'BEGIN { d = a - b; exit !(d < 1.0 && d > -1.0) }' ||
        die "test accuracy $acc_c compiled, $acc_e eager"
    echo "compiled-vs-eager: identical without reordering passes; with all passes the losses follow eager and test_acc is $acc_c against $acc_e"
    ;;
*)
    die "unknown check '$check'"
    ;;
esac

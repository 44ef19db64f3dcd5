#!/usr/bin/env bash
# One epoch of the reference model, compiled against eager, run alternately in one invocation:
# seconds per epoch, training images/s and peak RSS, for 1 and 2 threads, medians over the
# repeats, and the ratio compiled/eager of each pair.
# Usage: bench/mnist_compiled_vs_eager.sh [BUILD_DIR] [REPEATS] [mnist_cnn flags...]
#   (default build, 2 repeats; e.g. --model seed, --max-steps 200)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
repeats=${2:-2}
shift $(($# < 2 ? $# : 2))
bin=$build/examples/mnist_cnn
[ -x "$bin" ] || { echo "build first: $bin is missing" >&2; exit 1; }
value() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" | tail -1; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) vCPUs," \
     "vector: $(grep -o -w 'avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
printf "%-8s %-9s %10s %10s %12s %s\n" threads mode epoch_s img_s peak_rss_mb test_acc
for threads in 1 2; do
    : >/tmp/tg_bench_ratio.$$
    for r in $(seq "$repeats"); do
        for mode in eager compiled; do
            flag=; [ $mode = eager ] && flag=--eager
            line=$("$bin" --data data/mnist --epochs 1 --threads "$threads" $flag "$@" | tail -1)
            e=$(value epoch_s <<<"$line") i=$(value train_img_s <<<"$line")
            m=$(value peak_rss_mb <<<"$line") a=$(value test_acc <<<"$line")
            printf "%-8s %-9s %10s %10s %12s %s\n" "$threads" "$mode" "$e" "$i" "$m" "$a"
            echo "$threads $mode $e $i $m" >>/tmp/tg_bench_runs.$$
            [ $mode = eager ] && eager_s=$e || awk -v a="$eager_s" -v b="$e" 'BEGIN { print a / b }' >>/tmp/tg_bench_ratio.$$
        done
    done
    for mode in eager compiled; do
        es=$(awk -v t="$threads" -v m=$mode '$1 == t && $2 == m { print $3 }' /tmp/tg_bench_runs.$$ | median)
        rs=$(awk -v t="$threads" -v m=$mode '$1 == t && $2 == m { print $5 }' /tmp/tg_bench_runs.$$ | median)
        echo "median $threads thread(s) $mode: epoch_s=$es peak_rss_mb=$rs"
    done
    echo "median speed-up compiled/eager, $threads thread(s): $(median </tmp/tg_bench_ratio.$$)x (pairs: $(tr '\n' ' ' </tmp/tg_bench_ratio.$$))"
done
rm -f /tmp/tg_bench_runs.$$ /tmp/tg_bench_ratio.$$

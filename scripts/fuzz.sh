#!/usr/bin/env bash
# Builds the libFuzzer targets in tests/fuzz with clang (ASan + UBSan) and runs each for
# SECONDS (default 60). The seed corpus is copied to a scratch directory first, so the
# repository's corpus never grows. Exits non-zero if any target crashes, leaks or times out;
# prints the executions per target.
#
#   scripts/fuzz.sh [SECONDS]      environment: CC (default clang), FUZZ_DIR (scratch/build
#                                  directory, default build-fuzz under the repository root)
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${FUZZ_DIR:-$root/build-fuzz}"
cc="${CC:-clang}"
targets=(idx checkpoint)

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "fuzz.sh: $cc not found (Debian: apt-get install clang libclang-rt-dev)" >&2
    exit 2
fi

# The targets need only the I/O code and the error/shape helpers from core, and link zlib and
# jansson (Debian's builds: their code is not instrumented, ours is).
sources=(
    "$root/src/io/file.c" "$root/src/io/idx.c" "$root/src/io/checkpoint.c"
    "$root/src/core/error.c" "$root/src/core/shape.c"
)
cflags=(-std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 -Wall -Wextra
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
        -I"$root/include" -I"$root/src" -I"$root/src/core")

mkdir -p "$work"
status=0
declare -A execs results
for t in "${targets[@]}"; do
    bin="$work/fuzz_$t"
    echo "== building fuzz_$t"
    "$cc" "${cflags[@]}" -o "$bin" "$root/tests/fuzz/fuzz_$t.c" "${sources[@]}" -lz -ljansson

    corpus="$work/corpus_$t"
    rm -rf "$corpus" "$work/artifacts_$t"
    mkdir -p "$corpus" "$work/artifacts_$t"
    cp "$root/tests/fuzz/corpus/$t/"* "$corpus/"

    echo "== running fuzz_$t for ${seconds}s"
    log="$work/fuzz_$t.log"
    set +e
    # Leaks are crashes too (ASan's LeakSanitizer runs after each input with -detect_leaks=1).
    ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        "$bin" "$corpus" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$work/artifacts_$t/" >"$log" 2>&1
    rc=$?
    set -e
    n="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
    execs[$t]="${n:-?}"
    if [[ $rc -ne 0 ]]; then
        results[$t]="FAILED (exit $rc; see $log and $work/artifacts_$t/)"
        grep -E 'ERROR|SUMMARY|runtime error|deadly signal|Test unit written' "$log" |
            head -20 >&2 || true
        status=1
    else
        results[$t]="ok"
    fi
done

echo "== fuzz summary (${seconds}s per target)"
for t in "${targets[@]}"; do
    printf '  fuzz_%-12s executions: %-10s %s\n' "$t" "${execs[$t]}" "${results[$t]}"
done
exit $status

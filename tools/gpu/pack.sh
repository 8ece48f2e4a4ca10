#!/usr/bin/env bash
# Builds the GPU tests and benchmarks on this machine (no GPU needed) and packs them, with the
# Debian shared libraries they load, into .gpu/pack.tar.xz, for a lent GPU machine that has the
# CUDA libraries and PyTorch but none of the Debian -dev packages. Then, from the device tool:
#     run(command="bash tools/gpu/run.sh", carry=[".gpu"])
# (docs/gpu-runbook.md). The pack keeps bazel-bin's layout, so every binary finds our shared
# objects through its RUNPATH ($ORIGIN/../../_solib_k8); the CUDA toolkit's and NCCL's libraries
# are the GPU machine's own (too large to carry: cuBLASLt alone is 540 MB).
set -euo pipefail
cd "$(dirname "$0")/../.."

# Every test with a CUDA half (kernels/ops's ops, the model backend, the engine on the GPU, the job's
# device choice, SmolLM2 on the GPU) and the benchmarks with a GPU mode.
mapfile -t tests < <(bazel query --noshow_progress \
  'kind(cc_test, //kernels/ops:* + //kernels/base:backend_test + //kernels/model:* + //worker/model:llama_cuda_test + //worker/model:llama_golden_test + //worker/model:smollm2_test + //worker/job:device_test)' 2>/dev/null)
if [ "${#tests[@]}" -eq 0 ]; then
  echo "tools/gpu/pack.sh: bazel query found no tests (run it from a checkout where bazel works)" >&2
  exit 1
fi
benches=(//bench:gpu_bench //bench:llama_bench //bench:train_bench //bench:corda_bench)
bazel build -c opt "${tests[@]}" "${benches[@]}"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
binaries=()
for target in "${tests[@]}" "${benches[@]}"; do
  rel="bazel-bin/${target#//}"
  rel="${rel/://}"
  mkdir -p "$stage/$(dirname "$rel")"
  cp -L "$rel" "$stage/$rel"
  binaries+=("$rel")
done
printf '%s\n' "${tests[@]}" | sed -e 's|^//|bazel-bin/|' -e 's|:|/|' >"$stage/tests.txt"
mkdir -p "$stage/bazel-bin/_solib_k8" "$stage/lib"
cp -L bazel-bin/_solib_k8/*.so "$stage/bazel-bin/_solib_k8/"

# The Debian libraries they resolve here, minus glibc's, the compiler runtime's (the GPU machine's
# are newer and compatible), the CUDA toolkit's, the driver's and NCCL's.
for f in "${binaries[@]}" bazel-bin/_solib_k8/*.so; do ldd "$f"; done 2>/dev/null |
  awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
  grep -v -E '/usr/local/cuda|/libcuda\.so|/libnccl|/libc\.so|/libm\.so|/libdl\.so|/libpthread\.so|/librt\.so|ld-linux|/libgcc_s\.so|/libstdc\+\+\.so' |
  while read -r lib; do cp -L "$lib" "$stage/lib/"; done

git rev-parse HEAD >"$stage/commit.txt"
mkdir -p .gpu
tar -C "$stage" -cf - . | xz -T2 -6 >.gpu/pack.tar.xz
echo "tools/gpu/pack.sh: .gpu/pack.tar.xz $(du -h .gpu/pack.tar.xz | cut -f1) (${#tests[@]} tests, ${#benches[@]} benchmarks, $(ls "$stage/lib" | wc -l) libraries) at $(cat "$stage/commit.txt")"

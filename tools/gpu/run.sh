#!/usr/bin/env bash
# On a lent GPU machine (the device tool runs this in a copy of the repository): unpacks
# .gpu/pack.tar.xz (tools/gpu/pack.sh), runs every packed test from the repository root (the golden
# fixtures are read at their repository paths) and the cuSOLVER benchmark, and writes to $OUT:
#   summary.txt  the device, each test binary's passed / failed / skipped counts, the verdict;
#   tests.log    every test's full output;
#   bench.log    bench/gpu_bench's table.
# With --benches it also runs the benchmarks against PyTorch / PEFT on a SmolLM2-135M-shaped model
# with random weights (tools/gpu/make_shaped_model.py; the real GGUF is too large to carry):
#   llama_vs_torch.py, train_vs_peft.py and corda_vs_peft.py with --device cuda -> bench.log.
# Exit status: 0 when no test failed.
set -uo pipefail
root=$(pwd)
out=${OUT:-$root/.gpu/out}
mkdir -p "$out"
work=/tmp/sigmatune-gpu
rm -rf "$work" && mkdir -p "$work"
tar -C "$work" -xJf .gpu/pack.tar.xz || { echo "run.sh: no .gpu/pack.tar.xz (run tools/gpu/pack.sh and carry .gpu)"; exit 2; }

# The GPU machine's CUDA and NCCL libraries: the toolkit's, and those of the pip wheels of its PyTorch.
cuda_dirs=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib 2>/dev/null | tr '\n' ':')
wheel_dirs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for base in site.getsitepackages():
    dirs.update(os.path.dirname(p) for p in glob.glob(os.path.join(base, "nvidia", "*", "lib", "*.so*")))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$work/lib:${cuda_dirs}${wheel_dirs}:${LD_LIBRARY_PATH:-}"

{
  echo "commit $(cat "$work/commit.txt")  (tree: $(git rev-parse HEAD 2>/dev/null || echo unknown))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  date -u +%Y-%m-%dT%H:%M:%SZ
} >"$out/summary.txt"
: >"$out/tests.log"
failed=0
while read -r test; do
  log=$(mktemp)
  "$work/$test" >"$log" 2>&1
  rc=$?
  cat "$log" >>"$out/tests.log"
  passed=$(grep -c '^\[       OK \]' "$log")
  fails=$(grep -c '^\[  FAILED  \] .*(' "$log")
  skipped=$(grep -c '^\[  SKIPPED \] .*(' "$log")
  [ "$rc" -ne 0 ] && failed=1
  printf '%-60s rc=%d passed=%d failed=%d skipped=%d\n' "${test#bazel-bin/}" "$rc" "$passed" "$fails" "$skipped" >>"$out/summary.txt"
  rm -f "$log"
done <"$work/tests.txt"

"$work/bazel-bin/bench/gpu_bench" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true >"$out/bench.log" 2>&1 ||
  echo "gpu_bench failed (rc $?)" >>"$out/summary.txt"

if [ "${1:-}" = "--benches" ]; then
  model=/tmp/smollm2-shaped
  python3 tools/gpu/make_shaped_model.py "$model" >>"$out/bench.log" 2>&1
  for pair in "llama_vs_torch.py llama_bench" "train_vs_peft.py train_bench" "corda_vs_peft.py corda_bench"; do
    set -- $pair
    echo "== bench/$1 --device cuda" >>"$out/bench.log"
    PYTHONUNBUFFERED=1 python3 "bench/$1" "$model" --device cuda --binary "$work/bazel-bin/bench/$2" >>"$out/bench.log" 2>&1 ||
      echo "bench/$1 failed (rc $?)" >>"$out/summary.txt"
  done
fi
echo "verdict: $([ $failed -eq 0 ] && echo 'no test failed' || echo 'SOME TESTS FAILED')" >>"$out/summary.txt"
cat "$out/summary.txt"
exit $failed

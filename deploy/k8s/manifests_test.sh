#!/usr/bin/env bash
# //deploy/k8s:manifests_test: validates deploy/k8s and deploy/docker/Dockerfile offline with the
# pinned kubernetes-validate from the virtualenv tools/setup.sh makes, then proves that broken
# copies are caught (validate_k8s.py --self_test). The virtualenv missing is a FAILURE, not a skip.
#   args: validate_k8s.py kustomization.yaml Dockerfile coordinator worker cli setup.sh
set -euo pipefail

script="$1" kustomization="$2" dockerfile="$3" coordinator="$4" worker="$5" cli="$6" setup_sh="$7"

# Bazel gives tests neither the cache variables nor the real $HOME: find the virtualenv the way
# tools/setup.sh names it, with the home directory from the password database.
venv="${SIGMATUNE_DEPLOY_VENV:-}"
if [[ -z "$venv" ]]; then
  home="$(getent passwd "$(id -u)" | cut -d: -f6 || true)"
  venv="${XDG_CACHE_HOME:-${home:-$HOME}/.cache}/sigmatune/venv-deploy"
fi
python="$venv/bin/python"
if [[ ! -x "$python" ]] || ! "$python" -c 'import kubernetes_validate' 2>/dev/null; then
  echo "manifests_test: FAILED: no kubernetes-validate virtualenv at $venv" >&2
  echo "manifests_test: run 'bash tools/setup.sh' (it creates it with the pinned versions of" >&2
  echo "manifests_test: deploy/k8s/requirements-validate.txt), or point SIGMATUNE_DEPLOY_VENV at one" >&2
  exit 1
fi

# tools/setup.sh: the image's builder stage must install the packages it lists.
setup_args=(--setup_sh "$setup_sh")

exec "$python" "$script" --dir "$(dirname "$kustomization")" --dockerfile "$dockerfile" \
  --coordinator "$coordinator" --worker "$worker" --cli "$cli" --self_test "${setup_args[@]}"

#!/usr/bin/env bash
# Runs one job on a bare cluster without a coordinator: mpirun starts one sigmatune-worker rank
# per slot of the hostfile, all running the same spec. See README.md here.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: run-standalone.sh [options] SPEC.yaml [-- extra mpirun options]

Runs `mpirun ... sigmatune-worker --comm=mpi --job SPEC.yaml` over the hosts of a hostfile.
Every host must see the same paths: the worker binary, SPEC.yaml, the model and data it names,
and its output_dir (one shared filesystem). Exit status: the job's (0 done, 2 bad spec or data,
3 stopped by a signal: run the same command again to resume, 1 any other failure).

options:
  -H, --hostfile FILE     Open MPI hostfile (hostfile.example); default: this host only
  -n, --np N              ranks (default: one per slot of the hostfile)
  -w, --worker PATH       sigmatune-worker (default: the one on PATH)
      --btl LIST          Open MPI byte-transfer layers (default: self,vader,tcp)
      --ifaces NETS       CIDRs or interface names MPI may use, e.g. 10.0.0.0/16 (default: all)
      --cores-per-rank C  bind each rank to C cores and give it C OpenBLAS threads
                          (default: no binding, every rank sees every core)
      --no-cma            shared-memory copies without CMA (containers without CAP_SYS_PTRACE)
      --oversubscribe     allow more ranks than slots
      --stop-grace S      seconds the ranks get to checkpoint after Ctrl-C/SIGTERM before mpirun
                          SIGKILLs them (default 60); ranks blocked on a dead peer linger that
                          long too
      --comm-timeout S    seconds a rank waits in one collective before failing (worker default 1800)
      --quiet             no progress line (metrics.jsonl and TensorBoard are still written)
      --dry-run           print the mpirun command and exit
  -h, --help              this text

Variables NCCL_*, UCX_* and SIGMATUNE_* of this shell are passed to every rank (-x).
EOF
}

# shellcheck source=deploy/mpi/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

hostfile="" np="" worker="" btl="self,vader,tcp" ifaces="" cores_per_rank="" no_cma=0
oversubscribe=0 stop_grace=60 comm_timeout="" quiet=0 dry_run=0 spec=""
extra_mpirun=()
while (($# > 0)); do
  parse_mpi_option "$@"
  if ((consumed > 0)); then shift "$consumed"; continue; fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --quiet) quiet=1; shift ;;
    --) shift; extra_mpirun=("$@"); break ;;
    -*) die "unknown option $1 (see -h)" ;;
    *)
      [[ -z "$spec" ]] || die "one spec only (got $spec and $1)"
      spec="$1"; shift ;;
  esac
done

[[ -n "$spec" ]] || { usage >&2; die "missing SPEC.yaml"; }
[[ -f "$spec" && -r "$spec" ]] || die "spec $spec does not exist or is not readable"
# The ranks on other hosts start in the same directory, but an absolute path is unambiguous.
spec="$(cd "$(dirname "$spec")" && pwd)/$(basename "$spec")"
command -v mpirun >/dev/null || die "mpirun is not on PATH (Debian: apt-get install openmpi-bin)"
worker="$(find_binary sigmatune-worker "$worker")"

build_mpirun_args
worker_args=(--comm=mpi --job "$spec")
if [[ -n "$comm_timeout" ]]; then
  worker_args+=(--comm_timeout_s "$comm_timeout")
fi
if [[ "$quiet" == 1 ]]; then
  worker_args+=(--quiet)
fi

command=(mpirun "${mpirun_args[@]}" "$worker" "${worker_args[@]}")
if [[ "$dry_run" == 1 ]]; then
  print_command "${command[@]}"
  exit 0
fi
log "starting: $(print_command "${command[@]}")"
rc=0
"${command[@]}" || rc=$?
case "$rc" in
  0) log "the job finished" ;;
  3) log "the job stopped with a checkpoint; run the same command again to resume" ;;
  *) log "mpirun exited $rc (the newest checkpoint stays usable: run the same command again to resume)" ;;
esac
exit "$rc"

#!/usr/bin/env bash
# Serves a sigmatune coordinator with one worker group: mpirun starts one
# `sigmatune-worker --coordinator=HOST:PORT` rank per slot of the hostfile; when mpirun exits (a
# rank died, a job error aborted the group, a host was lost) the coordinator requeues the group's
# job and this script starts the group again, with exponential backoff. See README.md here.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: run-worker-group.sh [options] --coordinator HOST:PORT [-- extra mpirun options]

Starts `mpirun ... -x SIGMATUNE_TOKEN sigmatune-worker --comm=mpi --coordinator=HOST:PORT` and
starts it again whenever mpirun exits. The worker token comes from $SIGMATUNE_TOKEN or
--token-file (it is passed in the environment, never on a command line). Every host must see
the same paths: the worker binary, --tls-ca, and the coordinator's data roots and output
directories (one shared filesystem). SIGTERM/SIGINT stop the group (a running job stops with a
checkpoint and is requeued by the coordinator) and end the script.

options:
  -c, --coordinator HOST:PORT  the coordinator (required)
      --token-file FILE        file holding the worker token (default: $SIGMATUNE_TOKEN)
      --tls-ca FILE            PEM root certificate(s) of the coordinator: connect with TLS
  -H, --hostfile FILE          Open MPI hostfile (hostfile.example); default: this host only
  -n, --np N                   ranks (default: one per slot of the hostfile)
  -w, --worker PATH            sigmatune-worker (default: the one on PATH)
      --btl LIST               Open MPI byte-transfer layers (default: self,vader,tcp)
      --ifaces NETS            CIDRs or interface names MPI may use, e.g. 10.0.0.0/16 (default: all)
      --cores-per-rank C       bind each rank to C cores and give it C OpenBLAS threads
      --no-cma                 shared-memory copies without CMA (containers without CAP_SYS_PTRACE)
      --oversubscribe          allow more ranks than slots
      --stop-grace S           seconds the ranks get to checkpoint after SIGTERM before mpirun
                               SIGKILLs them (default 30); ranks blocked on a dead or stopped
                               peer linger that long too, so a stop or a restart after a lost
                               rank takes up to about twice this
      --comm-timeout S         seconds a rank waits in one collective (worker default 1800)
      --backoff S              first delay before a restart (default 5); doubles per restart
      --max-backoff S          longest delay (default 300)
      --healthy-after S        a group that ran this long resets the delay (default 600)
      --max-restarts N         give up after N restarts in a row (default 0: never)
      --once                   start the group once, no restarts
      --dry-run                print the mpirun command and exit
  -h, --help                   this text

Exit status 2 from the group (the coordinator refused the token, or a usage error) is not
retried. Variables NCCL_*, UCX_* and SIGMATUNE_* of this shell are passed to every rank.
EOF
}

# shellcheck source=deploy/mpi/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

coordinator="" token_file="" tls_ca="" hostfile="" np="" worker="" btl="self,vader,tcp" ifaces=""
cores_per_rank="" no_cma=0 oversubscribe=0 stop_grace=30 comm_timeout="" backoff=5 max_backoff=300
healthy_after=600 max_restarts=0 once=0 dry_run=0
extra_mpirun=()
while (($# > 0)); do
  parse_mpi_option "$@"
  if ((consumed > 0)); then shift "$consumed"; continue; fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    -c | --coordinator) need_value "$1" $#; coordinator="$2"; shift 2 ;;
    --coordinator=*) coordinator="${1#*=}"; shift ;;
    --token-file) need_value "$1" $#; token_file="$2"; shift 2 ;;
    --tls-ca) need_value "$1" $#; tls_ca="$2"; shift 2 ;;
    --backoff) need_value "$1" $#; backoff="$2"; shift 2 ;;
    --max-backoff) need_value "$1" $#; max_backoff="$2"; shift 2 ;;
    --healthy-after) need_value "$1" $#; healthy_after="$2"; shift 2 ;;
    --max-restarts) need_value "$1" $#; max_restarts="$2"; shift 2 ;;
    --once) once=1; shift ;;
    --) shift; extra_mpirun=("$@"); break ;;
    *) die "unknown argument $1 (see -h)" ;;
  esac
done

[[ -n "$coordinator" ]] || { usage >&2; die "missing --coordinator HOST:PORT"; }
[[ "$coordinator" =~ ^.+:[0-9]+$ ]] || die "--coordinator must be HOST:PORT, got '$coordinator'"
for value in "$backoff" "$max_backoff" "$healthy_after"; do
  is_count "$value" || die "--backoff, --max-backoff and --healthy-after take positive integers, got '$value'"
done
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die "--max-restarts must be a non-negative integer, got '$max_restarts'"
if [[ -n "$token_file" ]]; then
  [[ -f "$token_file" && -r "$token_file" ]] || die "token file $token_file does not exist or is not readable"
  SIGMATUNE_TOKEN="$(tr -d '[:space:]' <"$token_file")"
  [[ -n "$SIGMATUNE_TOKEN" ]] || die "token file $token_file is empty"
fi
[[ -n "${SIGMATUNE_TOKEN:-}" ]] || die "no worker token: set SIGMATUNE_TOKEN or pass --token-file FILE"
export SIGMATUNE_TOKEN
if [[ -n "$tls_ca" ]]; then
  [[ -f "$tls_ca" && -r "$tls_ca" ]] || die "--tls-ca $tls_ca does not exist or is not readable"
  tls_ca="$(cd "$(dirname "$tls_ca")" && pwd)/$(basename "$tls_ca")"
fi
command -v mpirun >/dev/null || die "mpirun is not on PATH (Debian: apt-get install openmpi-bin)"
worker="$(find_binary sigmatune-worker "$worker")"

build_mpirun_args
worker_args=(--comm=mpi --coordinator="$coordinator")
if [[ -n "$tls_ca" ]]; then
  worker_args+=(--tls_ca="$tls_ca")
fi
if [[ -n "$comm_timeout" ]]; then
  worker_args+=(--comm_timeout_s="$comm_timeout")
fi
command=(mpirun "${mpirun_args[@]}" -x SIGMATUNE_TOKEN "$worker" "${worker_args[@]}")
if [[ "$dry_run" == 1 ]]; then
  print_command "${command[@]}"
  exit 0
fi

# SIGTERM/SIGINT/SIGHUP: pass SIGTERM to mpirun (it forwards it to every rank), wait, end.
stopping=0
group_pid=""
sleep_pid=""
stop() {
  stopping=1
  if [[ -n "$group_pid" ]]; then
    log "stopping the group (mpirun pid $group_pid)"
    kill -TERM "$group_pid" 2>/dev/null || true
  fi
  if [[ -n "$sleep_pid" ]]; then
    kill -TERM "$sleep_pid" 2>/dev/null || true
  fi
}
trap stop TERM INT HUP

delay="$backoff"
restarts=0
while true; do
  started=$SECONDS
  log "starting the group: $(print_command "${command[@]}")"
  "${command[@]}" &
  group_pid=$!
  rc=0
  wait "$group_pid" || rc=$?
  # A trapped signal interrupts `wait`; wait again for mpirun's own status.
  while kill -0 "$group_pid" 2>/dev/null; do
    rc=0
    wait "$group_pid" || rc=$?
  done
  group_pid=""
  ran=$((SECONDS - started))
  if [[ "$stopping" == 1 ]]; then
    log "the group stopped (mpirun exited $rc after ${ran} s)"
    exit 0
  fi
  if [[ "$rc" == 2 ]]; then
    log "mpirun exited 2 after ${ran} s: the coordinator refused the token or the command line is wrong; not restarting"
    exit 2
  fi
  if [[ "$once" == 1 ]]; then
    log "mpirun exited $rc after ${ran} s (--once: not restarting)"
    exit "$rc"
  fi
  if ((ran >= healthy_after)); then
    delay="$backoff"
    restarts=0
  fi
  restarts=$((restarts + 1))
  if ((max_restarts > 0 && restarts > max_restarts)); then
    log "mpirun exited $rc after ${ran} s; $max_restarts restarts in a row failed, giving up"
    exit 1
  fi
  log "mpirun exited $rc after ${ran} s; the coordinator requeues its job; restart $restarts in ${delay} s"
  sleep "$delay" &
  sleep_pid=$!
  wait "$sleep_pid" || true
  sleep_pid=""
  if [[ "$stopping" == 1 ]]; then
    log "stopped while waiting to restart"
    exit 0
  fi
  delay=$((delay * 2 > max_backoff ? max_backoff : delay * 2))
done

# shellcheck shell=bash
# The option globals below are set by the script that sources this file.
# shellcheck disable=SC2154
# Sourced by run-standalone.sh and run-worker-group.sh: error helpers, the binary lookup and the
# mpirun options both use (README.md here explains each option).
#
# build_mpirun_args reads these globals (set by the caller's option parsing):
#   hostfile        Open MPI hostfile ("" = this host only, or the Slurm allocation)
#   np              ranks ("" = one per slot of the hostfile / allocation)
#   btl             byte-transfer layers (default self,vader,tcp)
#   ifaces          CIDR(s) or interface name(s) for MPI and Open MPI's own traffic ("" = all)
#   cores_per_rank  cores bound to each rank and its OpenBLAS threads ("" = no binding)
#   no_cma          1: shared-memory copies without CMA (containers without CAP_SYS_PTRACE)
#   oversubscribe   1: allow more ranks than slots
#   stop_grace      seconds between SIGTERM and SIGKILL when mpirun stops the ranks ("" = Open MPI's 1 s)
#                   (Open MPI's odls_base_sigkill_timeout: after Ctrl-C/SIGTERM, and after a rank died)
#   extra_mpirun    array of options appended verbatim (what follows `--`)
# and sets the array mpirun_args.

die() {
  echo "${0##*/}: error: $*" >&2
  exit 2
}

log() {
  echo "${0##*/}: $(date '+%Y-%m-%d %H:%M:%S') $*" >&2
}

# need_value OPTION "$#" : an option that takes a value must have one.
need_value() {
  (($2 >= 2)) || die "$1 needs a value (see -h)"
}

# find_binary NAME GIVEN: GIVEN (must be executable) or NAME on PATH, as an absolute path. mpirun
# starts the same path on every host, so it must exist there too (a shared or identical install).
find_binary() {
  local name="$1" given="$2" found
  if [[ -n "$given" ]]; then
    [[ -f "$given" && -x "$given" ]] || die "$given is not an executable file"
    found="$given"
  else
    found="$(command -v "$name" || true)"
    [[ -n "$found" ]] || die "$name is not on PATH: install it on every host or give its path with --worker"
  fi
  [[ "$found" == /* ]] || found="$PWD/$found"
  printf '%s\n' "$found"
}

# parse_mpi_option "$@": the options both launch scripts take (the globals listed above, plus
# worker, comm_timeout and dry_run). Sets `consumed` to how many arguments it used (0: not one of
# them, the caller handles it).
parse_mpi_option() {
  consumed=0
  case "$1" in
    -H | --hostfile) need_value "$1" $#; hostfile="$2"; consumed=2 ;;
    -n | --np) need_value "$1" $#; np="$2"; consumed=2 ;;
    -w | --worker) need_value "$1" $#; worker="$2"; consumed=2 ;;
    --btl) need_value "$1" $#; btl="$2"; consumed=2 ;;
    --ifaces) need_value "$1" $#; ifaces="$2"; consumed=2 ;;
    --cores-per-rank) need_value "$1" $#; cores_per_rank="$2"; consumed=2 ;;
    --no-cma) no_cma=1; consumed=1 ;;
    --oversubscribe) oversubscribe=1; consumed=1 ;;
    --stop-grace) need_value "$1" $#; stop_grace="$2"; consumed=2 ;;
    --comm-timeout) need_value "$1" $#; comm_timeout="$2"; consumed=2 ;;
    --dry-run) dry_run=1; consumed=1 ;;
  esac
}

# is_count VALUE: a positive integer.
is_count() {
  [[ "$1" =~ ^[1-9][0-9]*$ ]]
}

build_mpirun_args() {
  mpirun_args=()
  if [[ -n "$hostfile" ]]; then
    [[ -r "$hostfile" ]] || die "hostfile $hostfile does not exist or is not readable"
    mpirun_args+=(--hostfile "$hostfile")
  fi
  if [[ -n "$np" ]]; then
    is_count "$np" || die "--np must be a positive integer, got '$np'"
    mpirun_args+=(-np "$np")
  fi
  if [[ -n "$cores_per_rank" ]]; then
    is_count "$cores_per_rank" || die "--cores-per-rank must be a positive integer, got '$cores_per_rank'"
    # Each rank gets its own cores and uses exactly that many threads.
    mpirun_args+=(--map-by "slot:PE=$cores_per_rank" --bind-to core)
    export OPENBLAS_NUM_THREADS="$cores_per_rank" OMP_NUM_THREADS="$cores_per_rank"
  else
    # A rank runs many threads (OpenBLAS, the CPU engine): binding it to one core would starve it.
    mpirun_args+=(--bind-to none)
  fi
  mpirun_args+=(--mca btl "$btl")
  if [[ -n "$ifaces" ]]; then
    mpirun_args+=(--mca btl_tcp_if_include "$ifaces" --mca oob_tcp_if_include "$ifaces")
  fi
  if [[ "$no_cma" == 1 ]]; then
    mpirun_args+=(--mca btl_vader_single_copy_mechanism none)
  fi
  if [[ "$oversubscribe" == 1 ]]; then
    mpirun_args+=(--oversubscribe)
  fi
  if [[ -n "$stop_grace" ]]; then
    is_count "$stop_grace" || die "--stop-grace must be a positive integer (seconds), got '$stop_grace'"
    mpirun_args+=(--mca odls_base_sigkill_timeout "$stop_grace")
  fi
  if ((EUID == 0)); then
    mpirun_args+=(--allow-run-as-root)
  fi
  # The environment the ranks need on the other hosts (mpirun does not pass it by default).
  local var
  for var in PATH LD_LIBRARY_PATH OPENBLAS_NUM_THREADS OMP_NUM_THREADS; do
    if [[ -n "${!var:-}" ]]; then
      mpirun_args+=(-x "$var")
    fi
  done
  # NCCL, UCX and sigmatune settings of this shell go to every rank (the worker token is passed
  # explicitly by run-worker-group.sh, and only there).
  while IFS= read -r var; do
    case "$var" in
      SIGMATUNE_TOKEN) ;;
      NCCL_* | SIGMATUNE_* | UCX_*) mpirun_args+=(-x "$var") ;;
    esac
  done < <(compgen -e)
  mpirun_args+=("${extra_mpirun[@]}")
}

# print_command ARGV...: the command line, quoted where needed so that it can be pasted into a shell.
print_command() {
  local out="" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+="$arg "
    else
      out+="$(printf '%q' "$arg") "
    fi
  done
  echo "${out% }"
}

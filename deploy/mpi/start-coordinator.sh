#!/usr/bin/env bash
# Starts sigmatune-coordinator on the coordinator host after checking its files: the data roots,
# the tenants file (its roles and permissions), the TLS pair and the database directory. It then replaces
# itself with the coordinator (exec), so a service manager's signals reach the coordinator
# directly. See README.md here.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: start-coordinator.sh [options] --data-root DIRS --tenants-file FILE [-- extra coordinator flags]

Checks the configuration, then runs
  sigmatune-coordinator --listen=ADDR --data_root=DIRS --tenants_file=FILE --db=FILE [--tls_cert=...]

options:
  -l, --listen HOST:PORT    address to serve on (default 0.0.0.0:50051)
  -d, --data-root DIRS      comma-separated directories every path of a spec must lie in (required;
                            worker hosts must see them at the same paths)
  -t, --tenants-file FILE   tenants and token hashes (required unless --listen is a loopback address)
      --db FILE             SQLite job store (default /var/lib/sigmatune/jobs.db, or
                            ~/.local/state/sigmatune/coordinator.db when not root)
      --tls-cert FILE       PEM certificate chain: serve TLS (with --tls-key)
      --tls-key FILE        PEM private key of --tls-cert
      --local-workers N     also start and supervise a worker group of N ranks on this host
  -b, --bin PATH            sigmatune-coordinator (default: the one on PATH)
      --dry-run             print the command and exit
  -h, --help                this text

A tenants file line is `TENANT ROLE sha256:HEX [ROOTS]` with ROLE user or worker; make a token and
its line with
  t=$(openssl rand -hex 32); echo "acme user sha256:$(printf %s "$t" | sha256sum | cut -d' ' -f1)"
EOF
}

die() {
  echo "${0##*/}: error: $*" >&2
  exit 2
}
need_value() {
  (($2 >= 2)) || die "$1 needs a value (see -h)"
}

listen="0.0.0.0:50051" data_root="" tenants_file="" db="" tls_cert="" tls_key="" local_workers=""
bin="" dry_run=0
extra=()
while (($# > 0)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    -l | --listen) need_value "$1" $#; listen="$2"; shift 2 ;;
    -d | --data-root) need_value "$1" $#; data_root="$2"; shift 2 ;;
    -t | --tenants-file) need_value "$1" $#; tenants_file="$2"; shift 2 ;;
    --db) need_value "$1" $#; db="$2"; shift 2 ;;
    --tls-cert) need_value "$1" $#; tls_cert="$2"; shift 2 ;;
    --tls-key) need_value "$1" $#; tls_key="$2"; shift 2 ;;
    --local-workers) need_value "$1" $#; local_workers="$2"; shift 2 ;;
    -b | --bin) need_value "$1" $#; bin="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1 (see -h)" ;;
  esac
done

[[ "$listen" =~ ^.+:[0-9]+$ ]] || die "--listen must be HOST:PORT, got '$listen'"
[[ -n "$data_root" ]] || { usage >&2; die "missing --data-root DIRS"; }
IFS=',' read -r -a roots <<<"$data_root"
for root in "${roots[@]}"; do
  [[ "$root" == /* ]] || die "data root '$root' must be an absolute path (the workers resolve it too)"
  [[ -d "$root" ]] || die "data root $root is not a directory"
done

host="${listen%:*}"
case "$host" in
  127.* | localhost | "[::1]" | ::1) loopback=1 ;;
  *) loopback=0 ;;
esac
if [[ -z "$tenants_file" ]]; then
  ((loopback)) || die "missing --tenants-file: without one the coordinator has no authentication and serves loopback only"
else
  [[ -f "$tenants_file" && -r "$tenants_file" ]] || die "tenants file $tenants_file does not exist or is not readable"
  # The coordinator checks every line itself (and names file:line); here only the roles are counted.
  users=0 workers=0
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line%%#*}"
    read -r -a fields <<<"$line" || true
    ((${#fields[@]} >= 2)) || continue
    case "${fields[1]}" in
      user) users=$((users + 1)) ;;
      worker) workers=$((workers + 1)) ;;
    esac
  done <"$tenants_file"
  ((users > 0)) || echo "${0##*/}: warning: $tenants_file has no user token: nobody can submit jobs" >&2
  if ((workers == 0)) && [[ -z "$local_workers" ]]; then
    echo "${0##*/}: warning: $tenants_file has no worker token: no worker group can join" >&2
  fi
  if [[ "$(stat -c %a "$tenants_file")" =~ [2367]$ ]]; then
    die "tenants file $tenants_file is writable by others"
  fi
fi

if [[ -n "$tls_cert" || -n "$tls_key" ]]; then
  [[ -n "$tls_cert" && -n "$tls_key" ]] || die "--tls-cert and --tls-key go together"
  [[ -r "$tls_cert" ]] || die "TLS certificate $tls_cert is not readable"
  [[ -r "$tls_key" ]] || die "TLS key $tls_key is not readable"
elif ((!loopback)); then
  echo "${0##*/}: warning: serving $listen without TLS: tokens cross the network in clear text" >&2
fi

if [[ -z "$db" ]]; then
  if ((EUID == 0)); then
    db=/var/lib/sigmatune/jobs.db
  else
    db="${XDG_STATE_HOME:-$HOME/.local/state}/sigmatune/coordinator.db"
  fi
fi
if [[ "$dry_run" == 0 ]]; then
  mkdir -p "$(dirname "$db")" || die "cannot create the database directory $(dirname "$db")"
  [[ -w "$(dirname "$db")" ]] || die "the database directory $(dirname "$db") is not writable"
fi

if [[ -n "$bin" ]]; then
  [[ -f "$bin" && -x "$bin" ]] || die "$bin is not an executable file"
else
  bin="$(command -v sigmatune-coordinator || true)"
  [[ -n "$bin" ]] || die "sigmatune-coordinator is not on PATH; give its path with --bin"
fi

args=(--listen="$listen" --data_root="$data_root" --db="$db")
if [[ -n "$tenants_file" ]]; then
  args+=(--tenants_file="$tenants_file")
fi
if [[ -n "$tls_cert" ]]; then
  args+=(--tls_cert="$tls_cert" --tls_key="$tls_key")
fi
if [[ -n "$local_workers" ]]; then
  [[ "$local_workers" =~ ^[0-9]+$ ]] || die "--local-workers must be a non-negative integer, got '$local_workers'"
  args+=(--local_workers="$local_workers")
fi
command=("$bin" "${args[@]}" "${extra[@]}")
printed="$(printf '%q ' "${command[@]}")"
if [[ "$dry_run" == 1 ]]; then
  echo "${printed% }"
  exit 0
fi
echo "${0##*/}: starting ${printed% }" >&2
exec "${command[@]}"

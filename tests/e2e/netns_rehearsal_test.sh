#!/usr/bin/env bash
# A multi-host rehearsal of deploy/mpi on one machine, with network namespaces as hosts:
#
#   ns <p>-c   10.200.0.1  the coordinator host: deploy/mpi/start-coordinator.sh (listening on
#                          10.200.0.1:50051), deploy/mpi/run-worker-group.sh (mpirun) and the CLI
#   ns <p>-h2  10.200.0.2  worker host 1: an orted and one sigmatune-worker rank
#   ns <p>-h3  10.200.0.3  worker host 2: an orted and one sigmatune-worker rank
#   ns <p>-sw              the "switch": a bridge with one veth per host (eth0 in each host)
#
# mpirun reaches the worker "hosts" through an rsh agent (--mca plm_rsh_agent) that maps the host
# name of the hostfile (10.200.0.2 / 10.200.0.3) to its namespace and runs Open MPI's daemon there
# with `ip netns exec` (and that host's own TMPDIR); MPI traffic is TCP only, on 10.200.0.0/24.
# Everything shares one filesystem (what NFS gives a real cluster).
#
# Asserts: (1) the group of 2 ranks joins the coordinator, rank 0 and rank 1 run in two different
# host namespaces (h2 and h3, from /proc/PID/ns/net of the pids the ranks log); (2) a job submitted
# with `sigmatune --server=10.200.0.1:50051 submit spec.yaml --watch` from the coordinator host
# SUCCEEDS on the 2 ranks; (3) killing everything on host h3 (its daemon and rank) mid-training
# ends the group, run-worker-group.sh starts it again (backoff), the coordinator requeues the job
# and it resumes from its checkpoint and SUCCEEDS on attempt 2, again with one rank per worker
# host; (4) SIGTERM to run-worker-group.sh stops the group and leaves no
# process on either worker host. Everything is torn down on exit (trap), every step has a
# timeout, and a watchdog ends the test after 270 s.
#
# Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and `ip`; where network namespaces cannot be created
# the test fails with the reason, or skips (exit 0) when SIGMATUNE_ALLOW_SKIP_NETNS=1.
set -euo pipefail

readonly START=$SECONDS
readonly PORT=50051
readonly SERVER="10.200.0.1:$PORT"
# run-worker-group.sh --stop-grace: how long Open MPI waits between SIGTERM and SIGKILL of a rank.
# A rank blocked on a dead or stopped peer does not end before the SIGKILL, and Open MPI can wait
# twice, so this bounds how long a lost host stalls the group (5 s here; 30 s by default).
readonly STOP_GRACE=5

say() { echo "[$((SECONDS - START))s] $*"; }

# --- where the binaries and scripts are ---------------------------------------------------------
if [[ -n "${TEST_SRCDIR:-}" ]]; then
  runfiles="$TEST_SRCDIR/${TEST_WORKSPACE:-sigmatune}"
  bin_root="$runfiles"
else  # run by hand from the repository: bazel-bin/ for the binaries
  runfiles="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  bin_root="$runfiles/bazel-bin"
fi
coordinator_bin="$bin_root/server/sigmatune-coordinator"
worker_bin="$bin_root/worker/sigmatune-worker"
cli_bin="$bin_root/client/sigmatune"
deploy="$runfiles/deploy/mpi"

# Bazel's test protocol files belong to this script, not to the processes it starts.
unset TEST_PREMATURE_EXIT_FILE XML_OUTPUT_FILE GTEST_OUTPUT TEST_SHARD_STATUS_FILE

# --- can this machine make network namespaces? --------------------------------------------------
cannot() {
  if [[ "${SIGMATUNE_ALLOW_SKIP_NETNS:-}" == 1 ]]; then
    echo "SKIP: $* (SIGMATUNE_ALLOW_SKIP_NETNS=1)"
    exit 0
  fi
  echo "FAIL: $* (set SIGMATUNE_ALLOW_SKIP_NETNS=1 to skip this test where that is expected)"
  exit 1
}
command -v ip >/dev/null || cannot "the ip command (iproute2) is not installed"
((EUID == 0)) || cannot "not running as root (network namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN)"
command -v mpirun >/dev/null || { echo "FAIL: mpirun is not installed (bash tools/setup.sh)"; exit 1; }
for f in "$coordinator_bin" "$worker_bin" "$cli_bin"; do
  [[ -x "$f" ]] || { echo "FAIL: $f is missing (bazel build //server:sigmatune-coordinator //worker:sigmatune-worker //client:sigmatune)"; exit 1; }
done
for f in start-coordinator.sh run-worker-group.sh common.sh; do
  [[ -f "$deploy/$f" ]] || { echo "FAIL: $deploy/$f is missing"; exit 1; }
done

# Namespaces of earlier runs that were killed before their trap ran (the owner pid is in the name).
while read -r name _; do
  if [[ "$name" =~ ^stnr([0-9]+)-(c|h2|h3|sw)$ ]] && ! kill -0 "${BASH_REMATCH[1]}" 2>/dev/null; then
    ip netns pids "$name" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns delete "$name" 2>/dev/null || true
  fi
done < <(ip netns list 2>/dev/null || true)

prefix="stnr$$"
ns_c="$prefix-c" ns_h2="$prefix-h2" ns_h3="$prefix-h3" ns_sw="$prefix-sw"
all_ns=("$ns_c" "$ns_h2" "$ns_h3" "$ns_sw")
work="$(mktemp -d "${TEST_TMPDIR:-/tmp}/netns-rehearsal.XXXXXX")"
# mpirun's session directory holds Unix sockets: keep its path short.
mpitmp="$(mktemp -d /tmp/stnr.XXXXXX)"
watchdog_pid=""
failed=0

kill_namespace_processes() {
  local ns pids
  for ns in "${all_ns[@]}"; do
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    if [[ -n "$pids" ]]; then
      # shellcheck disable=SC2086
      kill -9 $pids 2>/dev/null || true
    fi
  done
}

dump_logs() {
  local f
  for f in coordinator.log group.log agent.log; do
    if [[ -f "$work/$f" ]]; then
      echo "----- $f (last 60 lines)"
      tail -n 60 "$work/$f"
    fi
  done
}

cleanup() {
  local rc=$?
  trap - EXIT TERM INT
  if [[ -n "$watchdog_pid" ]]; then
    kill "$watchdog_pid" 2>/dev/null || true
  fi
  if ((rc != 0)) && ((failed == 0)); then
    echo "FAIL: the test ended with status $rc"
    failed=1
  fi
  ((failed == 0)) || dump_logs
  if [[ -n "${TEST_UNDECLARED_OUTPUTS_DIR:-}" ]]; then
    cp "$work"/*.log "$TEST_UNDECLARED_OUTPUTS_DIR/" 2>/dev/null || true
  fi
  kill_namespace_processes
  sleep 0.2
  kill_namespace_processes
  local ns
  for ns in "${all_ns[@]}"; do
    ip netns delete "$ns" 2>/dev/null || true
  done
  rm -rf "$mpitmp"
  [[ -n "${TEST_TMPDIR:-}" ]] || rm -rf "$work"
  say "cleaned up (namespaces ${prefix}-*, their processes, $mpitmp)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

fail() {
  echo "FAIL: $*"
  failed=1
  exit 1
}

# The whole test ends within 270 s: the watchdog kills every process of the test's namespaces
# (which ends whatever the script waits for), then the script.
(
  trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  sleep 270 &
  nap=$!
  wait "$nap"
  echo "FAIL: the rehearsal took longer than 270 s; stopping it"
  for ns in "${all_ns[@]}"; do ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null; done
  kill -TERM $$
) &
watchdog_pid=$!

# --- the network ---------------------------------------------------------------------------------
for ns in "${all_ns[@]}"; do
  err="$(ip netns add "$ns" 2>&1)" || cannot "cannot create a network namespace: ip netns add $ns: $err"
done
ip -n "$ns_sw" link add br0 type bridge
ip -n "$ns_sw" link set br0 up
i=1
for host in c h2 h3; do
  ns="$prefix-$host"
  ip link add eth0 netns "$ns" type veth peer name "v-$host" netns "$ns_sw"
  ip -n "$ns_sw" link set "v-$host" master br0
  ip -n "$ns_sw" link set "v-$host" up
  ip -n "$ns" addr add "10.200.0.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  i=$((i + 1))
done
say "namespaces $ns_c (10.200.0.1), $ns_h2 (10.200.0.2), $ns_h3 (10.200.0.3) on a bridge in $ns_sw"

# --- the data root, tenants, spec ----------------------------------------------------------------
root="$work/root"
mkdir -p "$root/models" "$root/data" "$work/state"
cp -rL "$runfiles/examples/models/tiny-llama" "$root/models/tiny-llama"
cp -L "$runfiles/examples/data/arith-train.jsonl" "$runfiles/examples/data/knowledge.jsonl" "$root/data/"
new_token() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
hash_token() { printf 'sha256:%s' "$(printf %s "$1" | sha256sum | cut -d' ' -f1)"; }
user_token="$(new_token)"
worker_token="$(new_token)"
printf 'acme user %s\npool worker %s\n' "$(hash_token "$user_token")" "$(hash_token "$worker_token")" >"$work/tenants.txt"
chmod 600 "$work/tenants.txt"

spec() {  # spec NAME MAX_STEPS: the tiny job service_test submits too
  printf 'name: %s\n' "$1"
  cat "$runfiles/tests/e2e/testdata/service-job.yaml"
  printf 'max_steps: %s\n' "$2"
}
spec rehearsal 20 >"$work/short.yaml"
spec lost-host 400 >"$work/long.yaml"

# --- the rsh agent and the hostfile ----------------------------------------------------------------
# Each "host" has its own TMPDIR, as real hosts have their own /tmp: Open MPI's daemons on one
# host share a session directory named after the host name, which the namespaces have in common
# (two daemons writing hwloc's shared topology file there at once crash).
mkdir -p "$mpitmp/c" "$mpitmp/h2" "$mpitmp/h3"
cat >"$work/rsh-agent.sh" <<EOF
#!/usr/bin/env bash
# plm_rsh_agent for the rehearsal: called by Open MPI as \`rsh-agent.sh HOST COMMAND...\` (like ssh);
# runs COMMAND with /bin/sh in HOST's network namespace, with that host's TMPDIR.
host="\$1"
shift
case "\$host" in
  10.200.0.2) ns=$ns_h2 tmp=$mpitmp/h2 ;;
  10.200.0.3) ns=$ns_h3 tmp=$mpitmp/h3 ;;
  *) echo "rsh-agent: unknown host \$host" >&2; exit 255 ;;
esac
echo "rsh-agent: \$host -> namespace \$ns: \${*:1:2} ..." >>"$work/agent.log"
exec ip netns exec "\$ns" env TMPDIR="\$tmp" /bin/sh -c "\$*"
EOF
chmod +x "$work/rsh-agent.sh"
printf '10.200.0.2 slots=1\n10.200.0.3 slots=1\n' >"$work/hostfile"

# (Background processes are started with `ip netns exec` itself, not through a shell function, so
# that $! is the process that receives our signals: ip execs env, env execs timeout.)

# --- the coordinator on 10.200.0.1 ---------------------------------------------------------------
ip netns exec "$ns_c" timeout 280 "$deploy/start-coordinator.sh" --bin "$coordinator_bin" --listen "$SERVER" \
  --data-root "$root" --tenants-file "$work/tenants.txt" --db "$work/state/jobs.db" \
  -- --port_file="$work/port" --heartbeat_interval_s=0.5 --heartbeat_timeout_s=5 --restart_budget=3 \
  >"$work/coordinator.log" 2>&1 &
for _ in $(seq 300); do
  [[ -s "$work/port" ]] && break
  sleep 0.1
done
[[ -s "$work/port" ]] || fail "the coordinator did not start serving within 30 s"
say "coordinator serving on $SERVER"

# --- the worker group: mpirun on 10.200.0.1, ranks on 10.200.0.2 and 10.200.0.3 ------------------
ip netns exec "$ns_c" env SIGMATUNE_TOKEN="$worker_token" TMPDIR="$mpitmp/c" timeout 280 "$deploy/run-worker-group.sh" \
  --coordinator "$SERVER" --hostfile "$work/hostfile" --np 2 --worker "$worker_bin" \
  --btl tcp,self --ifaces 10.200.0.0/24 --comm-timeout 60 --stop-grace "$STOP_GRACE" \
  --backoff 1 --max-backoff 2 --max-restarts 3 \
  -- --mca plm_rsh_agent "$work/rsh-agent.sh" --mca plm_rsh_no_tree_spawn 1 \
  >"$work/group.log" 2>&1 &
group_pid=$!

# wait_for SECONDS FILE PATTERN [COUNT]: until FILE has COUNT lines matching PATTERN.
wait_for() {
  local deadline=$((SECONDS + $1)) file="$2" pattern="$3" count="${4:-1}"
  while ((SECONDS < deadline)); do
    if [[ -f "$file" ]] && (($(grep -cE "$pattern" "$file" || true) >= count)); then
      return 0
    fi
    sleep 0.2
  done
  return 1
}
wait_for 60 "$work/coordinator.log" 'worker group .* joined: 2 rank' ||
  fail "the worker group did not join the coordinator within 60 s"
say "the worker group of 2 ranks joined"

# Each rank logs "sigmatune-worker: rank R of 2 (local L of 1) on HOST, pid P": the pids must live
# in the two worker hosts' namespaces, one each.
check_ranks() {  # check_ranks OCCURRENCE (1: the first group, 2: the restarted one)
  local r pid ns seen=""
  for r in 0 1; do
    pid="$(grep -E "sigmatune-worker: rank $r of 2 .*, pid [0-9]+" "$work/group.log" | sed -n "$1p" |
      sed -E 's/.*, pid ([0-9]+).*/\1/')"
    [[ -n "$pid" ]] || fail "group $1: rank $r did not log its pid"
    ns="$(ip netns identify "$pid" 2>/dev/null || true)"
    [[ "$(readlink "/proc/$pid/ns/net")" == "net:[$(stat -L -c %i "/run/netns/$ns" 2>/dev/null || echo none)]" ]] ||
      fail "group $1: rank $r (pid $pid) is not in a named namespace (ip netns identify: '$ns')"
    case "$ns" in
      "$ns_h2" | "$ns_h3") ;;
      *) fail "group $1: rank $r (pid $pid) runs in namespace '$ns', not on a worker host" ;;
    esac
    [[ "$ns" != "$seen" ]] || fail "group $1: ranks 0 and 1 both run in $ns"
    seen="$ns"
    say "group $1: rank $r is pid $pid in $ns ($(readlink "/proc/$pid/ns/net"))"
  done
}
wait_for 30 "$work/group.log" 'sigmatune-worker: rank [01] of 2 ' 2 || fail "the ranks did not log their pids"
check_ranks 1
grep -q "10.200.0.2 -> namespace $ns_h2" "$work/agent.log" || fail "the rsh agent did not start a daemon on 10.200.0.2"
grep -q "10.200.0.3 -> namespace $ns_h3" "$work/agent.log" || fail "the rsh agent did not start a daemon on 10.200.0.3"

cli() {  # cli SECONDS ARGS...: the CLI on the coordinator host with the user's token
  local seconds="$1"
  shift
  ip netns exec "$ns_c" env SIGMATUNE_TOKEN="$user_token" timeout "$seconds" "$cli_bin" --server="$SERVER" "$@"
}

# --- 1. a job submitted from the coordinator host succeeds on the two hosts -----------------------
rc=0
cli 120 submit "$work/short.yaml" --watch >"$work/submit.log" 2>&1 || rc=$?
cat "$work/submit.log"
((rc == 0)) || fail "sigmatune submit --watch exited $rc"
grep -q 'SUCCEEDED' "$work/submit.log" || fail "the watch did not report SUCCEEDED"
grep -q '2 ranks over mpi' "$work/submit.log" || fail "the job did not run on 2 MPI ranks"
job1="$(grep -oE 'jobs/[0-9a-f]+' "$work/submit.log" | head -n 1)"
cli 30 get "$job1" --json >"$work/job1.json" || fail "sigmatune get $job1 --json failed"
grep -q '"JOB_STATE_SUCCEEDED"' "$work/job1.json" || fail "$job1 is not SUCCEEDED: $(cat "$work/job1.json")"
say "1. $job1 SUCCEEDED on ranks in $ns_h2 and $ns_h3"

# --- 2. host h3 dies mid-training: the group restarts, the job resumes and succeeds --------------
job2="$(cli 30 submit "$work/long.yaml" | grep -oE "jobs/[0-9a-f]+" | head -n 1 || true)"
[[ -n "$job2" ]] || fail "submitting the second job failed"
step=0
deadline=$((SECONDS + 90))
while ((SECONDS < deadline)); do
  json="$(cli 10 get "$job2" --json 2>/dev/null || true)"
  step="$(grep -oE '"step": *"?[0-9]+' <<<"$json" | head -n 1 | grep -oE '[0-9]+$' || echo 0)"
  if grep -q 'JOB_PHASE_TRAIN' <<<"$json" && ((step >= 60)); then break; fi
  grep -qE 'JOB_STATE_(SUCCEEDED|FAILED|CANCELLED)' <<<"$json" && fail "$job2 ended before it could be interrupted: $json"
  sleep 0.2
done
((step >= 60)) || fail "$job2 did not reach training step 60 within 90 s (last step $step)"
victims="$(ip netns pids "$ns_h3" | tr '\n' ' ')"
[[ -n "${victims// /}" ]] || fail "no process runs on 10.200.0.3"
say "2. $job2 at step $step (a checkpoint at 50): host 10.200.0.3 dies (kill -9 of $victims)"
killed_at=$SECONDS
# shellcheck disable=SC2086
kill -9 $victims
# mpirun ends the rank on 10.200.0.2 (blocked on its dead peer) within about 2 x STOP_GRACE.
wait_for 60 "$work/group.log" 'restart 1 in' || fail "run-worker-group.sh did not restart the group within 60 s"
say "mpirun ended the group $((SECONDS - killed_at)) s after the host died; run-worker-group.sh restarts it"
wait_for 60 "$work/coordinator.log" 'worker group .* joined: 2 rank' 2 || fail "the restarted group did not join"
say "the group was restarted and joined again"
wait_for 30 "$work/group.log" 'sigmatune-worker: rank [01] of 2 ' 4 || fail "the restarted ranks did not log their pids"
check_ranks 2
rc=0
cli 150 watch "$job2" >"$work/watch.log" 2>&1 || rc=$?
tail -n 12 "$work/watch.log"
((rc == 0)) || fail "sigmatune watch $job2 exited $rc"
cli 30 get "$job2" --json >"$work/job2.json" || fail "sigmatune get $job2 --json failed"
grep -q '"JOB_STATE_SUCCEEDED"' "$work/job2.json" || fail "$job2 is not SUCCEEDED"
grep -qE '"attempt": *2' "$work/job2.json" || fail "$job2 did not resume on a second attempt: $(cat "$work/job2.json")"
grep -q 'lost' "$work/coordinator.log" || fail "the coordinator did not log the lost group"
grep -qE 'resumed from .*\(step [1-9][0-9]* of 400\)' "$work/watch.log" ||
  fail "$job2 did not resume from a checkpoint (no 'resumed from ... (step N of 400)' event)"
say "$job2 SUCCEEDED on attempt 2 after the lost host"

# --- 3. SIGTERM stops the group and nothing is left on the worker hosts ---------------------------
stop_at=$SECONDS
kill -TERM "$group_pid"
rc=0
for _ in $(seq 450); do
  kill -0 "$group_pid" 2>/dev/null || break
  sleep 0.2
done
kill -0 "$group_pid" 2>/dev/null && fail "run-worker-group.sh did not stop within 90 s of SIGTERM"
wait "$group_pid" || rc=$?
((rc == 0)) || fail "run-worker-group.sh exited $rc after SIGTERM"
grep -q 'the group stopped' "$work/group.log" || fail "run-worker-group.sh did not report the stop"
say "run-worker-group.sh ended $((SECONDS - stop_at)) s after SIGTERM"
# mpirun returns at once; the daemons on the worker hosts end their ranks (SIGTERM, then SIGKILL
# after STOP_GRACE for a rank blocked on its stopped peer) and then themselves.
deadline=$((SECONDS + 4 * STOP_GRACE + 20))
while ((SECONDS < deadline)); do
  [[ -z "$(ip netns pids "$ns_h2")$(ip netns pids "$ns_h3")" ]] && break
  sleep 0.2
done
left="$(ip netns pids "$ns_h2" | tr '\n' ' ')$(ip netns pids "$ns_h3" | tr '\n' ' ')"
[[ -z "${left// /}" ]] || fail "processes left on the worker hosts $((4 * STOP_GRACE + 20)) s after the stop: $left"
say "3. the group stopped: no process left on 10.200.0.2 or 10.200.0.3 $((SECONDS - stop_at)) s after SIGTERM"
say "PASS"

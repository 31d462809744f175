# shellcheck shell=bash disable=SC2034  # settings are used by the scripts that source this
# Shared helpers for up.sh / down.sh / status.sh / node.sh (sourced, not run).
#
# The local test cluster runs these daemons on this machine:
#   munged (system-wide, socket /run/munge) -> mariadbd (own datadir/port/socket under $BASE)
#   -> slurmdbd -> slurmctld -> slurmd (one per compute node).
# One compute node (default): this machine itself, at 127.0.0.1.
# N compute nodes (COVER_HPC_SLURM_NODES=N >= 2): one Linux network namespace per node, each with
# its own hostname (node1..nodeN, a UTS namespace), its own address ($NET.11, .12, ...) on a veth
# joined to the bridge $BRIDGE ($NET.1/24, in this machine's namespace), and its own slurmd. The
# controller, slurmdbd, MariaDB and munge stay outside; every packet stays on the bridge's range.
# Everything Slurm writes lives under $BASE; only munged uses system paths.

# ---------------------------------------------------------------- settings
BASE="${COVER_HPC_SLURM_BASE:-/tmp/cover-hpc-slurm}"
BASE="${BASE%/}"
# The node count: COVER_HPC_SLURM_NODES; else, for the scripts that look at a running cluster
# (down/status/node.sh, not up.sh), the count in its slurm.conf; else 1.
NODES="${COVER_HPC_SLURM_NODES:-}"
if [[ -z "$NODES" && "${SLURM_LOCAL_SCRIPT:-}" != up && -f "$BASE/etc/slurm.conf" ]]; then
    NODES=$(grep -c '^NodeName=' "$BASE/etc/slurm.conf" || true)
fi
[[ -n "$NODES" && "$NODES" != 0 ]] || NODES=1
if [[ "$NODES" =~ ^[0-9]+$ ]] && (( NODES > 1 )); then
    NODE_CPUS="${COVER_HPC_SLURM_CPUS:-4}"
else
    NODE_CPUS="${COVER_HPC_SLURM_CPUS:-8}"
fi
NET="${COVER_HPC_SLURM_NET:-10.231.7}"    # first three octets of the nodes' private /24
CLUSTER_NAME=coverhpc
NS_PREFIX=chpc                             # netns chpc-node1.., veths chpc-v1.., bridge chpc-br
BRIDGE="$NS_PREFIX-br"

ETC="$BASE/etc"
LOG="$BASE/log"
RUN="$BASE/run"
STATE="$BASE/state"
DB="$BASE/db"
CONF="$ETC/slurm.conf"
DBD_CONF="$ETC/slurmdbd.conf"
HOSTS_FILE="$ETC/hosts"                    # bind-mounted on /etc/hosts inside each node (multi-node)
ENV_FILE="$BASE/env"
MARKER="$BASE/.cover-hpc-slurm"      # marks the folder as ours (down.sh --purge checks it)

# Fixed ports: only one such cluster per machine (munge is shared anyway).
SLURMCTLD_PORT=6817
SLURMD_PORT=6818
SLURMDBD_PORT=6819
DB_PORT=3307
DB_SOCKET="$RUN/mariadb.sock"
DB_PIDFILE="$RUN/mariadbd.pid"
DB_DATADIR="$DB/data"
DB_USER=slurm
DB_PASS=slurmpw
DB_NAME=slurm_acct_db

MUNGE_PIDFILE=/run/munge/munged.pid

# Every Slurm client and daemon started from these scripts sees this conf.
export SLURM_CONF="$CONF"

# Topology: the controller's address and the compute nodes (names and addresses).
multi_node() { (( NODES > 1 )); }
NODE_NAMES=()
NODE_ADDRS=()
if [[ "$NODES" =~ ^[0-9]+$ ]] && (( NODES > 1 )); then
    CTL_ADDR="$NET.1"
    for (( i = 1; i <= NODES; i++ )); do
        NODE_NAMES+=("node$i")
        NODE_ADDRS+=("$NET.$(( 10 + i ))")
    done
else
    CTL_ADDR=127.0.0.1
    NODE_NAMES+=("$(hostname -s)")
    NODE_ADDRS+=(127.0.0.1)
fi

# ---------------------------------------------------------------- output
log() { printf '[slurm-local %s] %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Print the last lines of a log file (used when a wait times out).
show_log() {
    local f="$1" n="${2:-40}"
    if [[ -f "$f" ]]; then
        log "---- last $n lines of $f ----"
        tail -n "$n" "$f" >&2 || true
        log "---- end of $f ----"
    else
        log "(no log file $f)"
    fi
}

require_root() {
    [[ "${EUID:-$(id -u)}" -eq 0 ]] || die "must run as root (starts munged/slurmd, installs packages)"
}

# ---------------------------------------------------------------- processes
# These run in every wait-loop iteration, so they use shell builtins and at most one grep
# over /proc (no fork per process).

# A PID counts as running only when /proc/PID/status says so and it is not a zombie:
# on this VM exited daemons linger as zombies of PID 1 and `kill -0` is true for them.
pid_running() {
    local pid="$1" key val
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    while read -r key val _; do
        if [[ "$key" == State: ]]; then
            [[ "$val" != Z && "$val" != X ]]
            return
        fi
    done 2>/dev/null <"/proc/$pid/status" || return 1
    return 1
}

# Process name (comm) of PID, empty if gone.
pid_comm() {
    local c=""
    { read -r c <"/proc/$1/comm"; } 2>/dev/null || true
    printf '%s' "$c"
}

# PIDs whose environment holds exactly SLURM_CONF=$CONF (one grep over /proc/*/environ;
# unreadable entries such as kernel threads are skipped silently).
pids_with_our_conf() {
    local f
    grep -lszxF -- "SLURM_CONF=$CONF" /proc/[0-9]*/environ 2>/dev/null | while read -r f; do
        f="${f#/proc/}"; echo "${f%/environ}"
    done || true
    return 0
}

# PIDs (one per line) of running processes whose comm is NAME and which belong to this
# cluster: started with our SLURM_CONF in their environment (slurm daemons inherit it from
# up.sh; job steps and payloads from slurmd). Robust against stale or missing pidfiles.
# Never fails (set -e / pipefail safe).
our_pids() {
    local name="$1" pid
    for pid in $(pids_with_our_conf); do
        [[ "$(pid_comm "$pid")" == "$name" ]] || continue
        pid_running "$pid" || continue
        echo "$pid"
    done
    return 0
}

# PIDs of the mariadbd serving our datadir (matched on its command line).
mariadb_pids() {
    local f pid
    for f in $(grep -lszxF -- "--datadir=$DB_DATADIR" /proc/[0-9]*/cmdline 2>/dev/null || true); do
        pid="${f#/proc/}"; pid="${pid%/cmdline}"
        [[ "$(pid_comm "$pid")" == mariadbd ]] || continue
        pid_running "$pid" || continue
        echo "$pid"
    done
    return 0
}

# PID of the running munged (system-wide), from its pidfile, else by name.
munged_pids() {
    local pid="" d
    { read -r pid <"$MUNGE_PIDFILE"; } 2>/dev/null || true
    if pid_running "$pid" && [[ "$(pid_comm "$pid")" == munged ]]; then
        echo "$pid"; return 0
    fi
    for d in /proc/[0-9]*; do
        pid="${d#/proc/}"
        if [[ "$(pid_comm "$pid")" == munged ]] && pid_running "$pid"; then echo "$pid"; fi
    done
    return 0
}

# PIDs for a daemon by short name: munged mariadbd slurmdbd slurmctld slurmd.
daemon_pids() {
    case "$1" in
        munged)   munged_pids ;;
        mariadbd) mariadb_pids ;;
        *)        our_pids "$1" ;;
    esac
}

# Network namespace of compute node NAME (multi-node only).
node_netns() { printf '%s-%s' "$NS_PREFIX" "$1"; }

# PIDs of every process inside compute node NAME's network namespace (multi-node): slurmd,
# slurmstepd and the job processes all live there, so this is exactly what the node runs.
netns_pids() {
    [[ -e "/run/netns/$(node_netns "$1")" ]] || return 0
    ip netns pids "$(node_netns "$1")" 2>/dev/null || true
    return 0
}

# PID of the slurmd serving compute node NAME, empty when it is not running.
node_slurmd_pids() {
    local name="$1" pid
    if multi_node; then
        for pid in $(netns_pids "$name"); do
            [[ "$(pid_comm "$pid")" == slurmd ]] && pid_running "$pid" && echo "$pid"
        done
    else
        our_pids slurmd
    fi
    return 0
}

# Any process of that daemon is running (for stopping and waiting until it is gone).
daemon_any() { [[ -n "$(daemon_pids "$1")" ]]; }

# slurmd counts as running only when every compute node has its own: sinfo can show a node
# idle for minutes after its slurmd died (until SlurmdTimeout).
daemon_running() {
    local name
    if [[ "$1" == slurmd ]]; then
        for name in "${NODE_NAMES[@]}"; do
            [[ -n "$(node_slurmd_pids "$name")" ]] || return 1
        done
        return 0
    fi
    [[ -n "$(daemon_pids "$1")" ]]
}

DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

# All descendants of the given PIDs (one per line, not including the PIDs themselves).
descendants() {
    [[ $# -gt 0 ]] || return 0
    ps -e -o pid=,ppid= 2>/dev/null | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) want[r[i]] = 1 }
        { parent[$1] = $2; order[NR] = $1 }
        END {
            changed = 1
            while (changed) {
                changed = 0
                for (i = 1; i <= NR; i++) {
                    p = order[i]
                    if (!(p in want) && (parent[p] in want)) { want[p] = 1; out[p] = 1; changed = 1 }
                }
            }
            for (p in out) print p
        }' || true
}

# ---------------------------------------------------------------- waiting
# wait_daemon SECONDS "DAEMON..." "what" LOGFILE CMD... : run CMD every 0.25 s until it
# succeeds. Wall-clock deadline (a client call can itself take ~10 s when a daemon is down, so
# an iteration count would lie); gives up early as soon as one of the daemons has died (after a
# 2 s grace for daemonizing). On failure prints the tail of LOGFILE and returns 1.
wait_daemon() {
    local limit="$1" names="$2" what="$3" logfile="$4"; shift 4
    local start deadline name
    start=$(date +%s); deadline=$(( start + limit ))
    while true; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if (( $(date +%s) - start >= 2 )); then
            for name in $names; do
                if ! daemon_running "$name"; then
                    log "$name is not running (died while waiting for: $what)"
                    show_log "$logfile"
                    return 1
                fi
            done
        fi
        if (( $(date +%s) >= deadline )); then
            log "timed out after ${limit}s waiting for: $what"
            show_log "$logfile"
            return 1
        fi
        sleep 0.25
    done
}

# wait_gone SECONDS DAEMON : wait until no process of that daemon is left. Returns 1 on timeout.
wait_gone() {
    local limit="$1" name="$2"
    local deadline=$(( $(date +%s) + limit ))
    while daemon_any "$name"; do
        (( $(date +%s) < deadline )) || return 1
        sleep 0.2
    done
    return 0
}

# ---------------------------------------------------------------- slurm clients
# Clients hang ~60 s when SLURM_CONF names a missing file (configless lookup), and ~10 s
# when slurmctld is down: only call them when the conf exists, always under `timeout`.
conf_exists() { [[ -f "$CONF" ]]; }

# "NAME STATE" per compute node as sinfo prints it (%T: idle, mixed, idle*, down*, ...).
node_states() {
    conf_exists || return 1
    timeout 15 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true
}

# State of one node (empty on error).
node_state() {
    node_states | awk -v n="$1" '$1 == n {print $2; exit}'
}

# Every configured node is usable: responding (no '*' suffix) and not down/drained/failing.
nodes_usable() {
    local out name state usable=0
    out=$(node_states) || return 1
    while read -r name state; do
        [[ "$state" =~ ^(idle|mixed|allocated|completing|planned)$ ]] && usable=$(( usable + 1 ))
    done <<<"$out"
    (( usable == ${#NODE_NAMES[@]} ))
}

# One line for logs: "node1=idle node2=idle".
nodes_summary() {
    node_states | awk '{printf "%s%s=%s", sep, $1, $2; sep=" "}'
}

# slurmdbd answers (it daemonizes before it listens: see the race in the README).
dbd_answers() {
    conf_exists || return 1
    timeout 10 sacctmgr -n list cluster >/dev/null 2>&1
}

# MariaDB answers on our socket.
db_answers() {
    timeout 5 mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot ping >/dev/null 2>&1
}

# Everything up and the node usable: the definition of "healthy" for up.sh and status.sh.
cluster_healthy() {
    local d
    conf_exists || return 1
    for d in "${DAEMONS[@]}"; do
        daemon_running "$d" || return 1
    done
    nodes_usable
}

# ---------------------------------------------------------------- multi-node network
# Namespaces / veths of this cluster's nodes that exist now (whatever NODES says: a cluster
# brought up with another node count must still be torn down completely).
existing_netns() {
    ip netns list 2>/dev/null | awk -v p="$NS_PREFIX-node" 'index($1, p) == 1 {print $1}' || true
}
existing_veths() {
    ip -o link show 2>/dev/null | awk -F': ' -v p="$NS_PREFIX-v" '{sub(/@.*/, "", $2)} index($2, p) == 1 {print $2}' || true
}

# The checks that fail fast with a clear message instead of a hanging job later.
check_netns_support() {
    local cmd
    for cmd in ip nsenter unshare; do
        command -v "$cmd" >/dev/null 2>&1 || die "multi-node needs '$cmd' (Debian: apt-get install iproute2 util-linux)"
    done
    [[ "$NET" =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] \
        || die "COVER_HPC_SLURM_NET must be three octets such as 10.231.7 (got '$NET')"
    (( NODES <= 200 )) || die "COVER_HPC_SLURM_NODES=$NODES: at most 200 nodes fit in $NET.0/24"
    # Another interface on the same /24 would make node traffic leave through it.
    local clash
    clash=$(ip -o -4 addr show 2>/dev/null | awk -v net="$NET." -v br="$BRIDGE" '$2 != br && index($4, net) == 1 {print $2 " " $4}')
    [[ -z "$clash" ]] || die "the nodes' network $NET.0/24 is already in use here ($clash): set COVER_HPC_SLURM_NET to a free private /24"
    if ! { ip netns add "$NS_PREFIX-probe" 2>/dev/null && ip netns del "$NS_PREFIX-probe"; }; then
        die "cannot create network namespaces (needs root with CAP_SYS_ADMIN and CAP_NET_ADMIN; in Docker: --privileged)"
    fi
}

# Bridge $NET.1/24 plus, per node, a namespace with eth0 = $NET.(10+i). Idempotent.
net_up() {
    local i ns veth
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
    fi
    ip addr flush dev "$BRIDGE"
    ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for (( i = 1; i <= NODES; i++ )); do
        ns=$(node_netns "node$i"); veth="$NS_PREFIX-v$i"
        [[ -e "/run/netns/$ns" ]] || ip netns add "$ns"
        if ! ip link show "$veth" >/dev/null 2>&1; then
            ip link add "$veth" type veth peer name eth0 netns "$ns"
        fi
        ip link set "$veth" master "$BRIDGE" up
        ip -n "$ns" addr flush dev eth0
        ip -n "$ns" addr add "${NODE_ADDRS[i - 1]}/24" dev eth0
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
    done
}

# Kill whatever still runs inside the nodes, then delete veths (synchronous; deleting the
# namespace frees its veth only later), namespaces and the bridge. Safe when nothing exists.
net_down() {
    local ns pids keep pid veth
    keep=" $(self_and_ancestors | tr '\n' ' ') "
    for ns in $(existing_netns); do
        pids=""
        for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
            [[ "$keep" == *" $pid "* ]] || pids+=" $pid"
        done
        if [[ -n "$pids" ]]; then
            log "killing what is left in $ns:$pids"
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
    done
    for veth in $(existing_veths); do ip link del "$veth" 2>/dev/null || true; done
    for ns in $(existing_netns); do ip netns del "$ns" 2>/dev/null || true; done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE" 2>/dev/null || true; fi
}

# Start the slurmd of compute node NAME (multi-node: inside its namespace, with its own
# hostname and the cluster's hosts file on /etc/hosts, in a private mount namespace so the
# machine's /etc/hosts is untouched). Not `ip netns exec`: it remounts /sys, and slurmd then
# finds no cgroup filesystem and exits.
start_slurmd() {
    local name="$1"
    mkdir -p "$STATE/d/$name"     # slurmd creates its spool dir only when the parent exists
    if multi_node; then
        # shellcheck disable=SC2016  # $1/$2 are the inner shell's arguments
        nsenter --net="/run/netns/$(node_netns "$name")" -- unshare --uts --mount -- \
            sh -c 'hostname "$1" && mount --bind "$2" /etc/hosts && exec /usr/sbin/slurmd -N "$1"' \
            sh "$name" "$HOSTS_FILE" </dev/null >>"$LOG/slurmd.$name.stdout" 2>&1 9>&-
    else
        /usr/sbin/slurmd </dev/null >>"$LOG/slurmd.$name.stdout" 2>&1 9>&-
    fi
}

# ---------------------------------------------------------------- locking
# One cluster per machine (fixed ports, shared munge), so one machine-wide lock serialises
# up.sh/down.sh. fd 9 must never leak into a daemon: every daemon start closes it (9>&-),
# otherwise the daemon would hold the lock for its whole life.
LOCK_FILE=/run/lock/cover-hpc-slurm.lock
take_lock() {
    mkdir -p "$(dirname "$LOCK_FILE")"
    exec 9>>"$LOCK_FILE"
    if ! flock -w "${COVER_HPC_SLURM_LOCK_WAIT:-300}" 9; then
        die "another up.sh/down.sh holds $LOCK_FILE"
    fi
}

# ---------------------------------------------------------------- stopping
# stop_daemon NAME SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL and wait 5 s more.
stop_daemon() {
    local name="$1" limit="$2" pids
    pids=$(daemon_pids "$name")
    [[ -n "$pids" ]] || return 0
    log "stopping $name (pid $(tr '\n' ' ' <<<"$pids" | sed 's/ $//'))"
    # shellcheck disable=SC2086  # word splitting of the PID list is intended
    kill -TERM $pids 2>/dev/null || true
    if ! wait_gone "$limit" "$name"; then
        pids=$(daemon_pids "$name")
        log "$name did not stop within ${limit}s, sending SIGKILL to $pids"
        if [[ -n "$pids" ]]; then
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
        wait_gone 5 "$name" || log "WARNING: $name still running: $(daemon_pids "$name" | tr '\n' ' ')"
    fi
}

# This process and its ancestors: never kill those (down.sh may run from inside a job or
# from a client whose environment holds our SLURM_CONF).
self_and_ancestors() {
    local pid=$$ ppid
    while [[ "$pid" =~ ^[0-9]+$ && "$pid" -gt 1 ]]; do
        echo "$pid"
        ppid=$(awk '/^PPid:/ {print $2; exit}' "/proc/$pid/status" 2>/dev/null || true)
        [[ -n "$ppid" ]] || break
        pid="$ppid"
    done
    return 0
}

# Leftover job processes: slurmstepd of this cluster (+ their descendants), and processes
# whose environment holds our SLURM_CONF *and* a SLURM_JOB_ID (job payloads orphaned by a
# crashed slurmstepd). A restarted slurmd does not see old slurmstepds, so they would
# otherwise keep running unseen.
orphan_job_pids() {
    local steps pid keep
    keep=" $(self_and_ancestors | tr '\n' ' ') "
    steps=$(our_pids slurmstepd)
    {
        if [[ -n "$steps" ]]; then
            echo "$steps"
            # shellcheck disable=SC2086
            descendants $steps
        fi
        for pid in $(pids_with_our_conf); do
            grep -qsz '^SLURM_JOB_ID=' "/proc/$pid/environ" 2>/dev/null && echo "$pid"
        done
    } | sort -un | while read -r pid; do
        [[ "$keep" == *" $pid "* ]] && continue
        if pid_running "$pid"; then echo "$pid"; fi
    done || true
    return 0
}

# Is any slurmctld/slurmd/slurmdbd running on this machine (whatever its configuration)?
any_slurm_daemon() {
    local d pid c
    for d in /proc/[0-9]*; do
        pid="${d#/proc/}"
        c=$(pid_comm "$pid")
        case "$c" in
            slurmctld|slurmd|slurmdbd) pid_running "$pid" && return 0 ;;
        esac
    done
    return 1
}

# Stop everything, in reverse start order. Safe when nothing runs.
stop_cluster() {
    local jobs pids t0 deadline
    t0=$(date +%s.%N)

    if conf_exists && daemon_running slurmctld; then
        # 1. Cancel every job first: slurmd's shutdown leaves running slurmstepds (and their
        #    payloads) alive.
        jobs=$(timeout 15 squeue -h -o %A 2>/dev/null | sort -u || true)
        if [[ -n "$jobs" ]]; then
            log "cancelling $(wc -w <<<"$jobs") job(s)"
            # shellcheck disable=SC2086
            timeout 15 scancel $jobs 2>/dev/null || true
            # KillWait=5: jobs that ignore SIGTERM are SIGKILLed after 5 s.
            deadline=$(( $(date +%s) + 30 ))
            while [[ -n "$(timeout 15 squeue -h -o %A 2>/dev/null || true)" ]]; do
                if (( $(date +%s) >= deadline )); then
                    log "WARNING: jobs still listed after 30 s, shutting down anyway:"
                    timeout 15 squeue >&2 2>/dev/null || true
                    break
                fi
                sleep 0.25
            done
        fi
        # 2. scontrol shutdown stops slurmctld and every slurmd.
        log "scontrol shutdown"
        timeout 15 scontrol shutdown >/dev/null 2>&1 || log "scontrol shutdown failed; signalling daemons"
    fi
    # Give the shutdown a moment, then signal whatever did not go away (or everything, when
    # slurmctld was not there to relay the shutdown).
    wait_gone 20 slurmctld || true
    wait_gone 10 slurmd || true
    stop_daemon slurmctld 20
    stop_daemon slurmd 20

    # 3. Left-over job steps / payloads.
    pids=$(orphan_job_pids)
    if [[ -n "$pids" ]]; then
        log "killing orphan job processes: $(tr '\n' ' ' <<<"$pids")"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi

    # 3b. Multi-node: what is left inside the nodes' namespaces, then the network itself.
    if [[ -n "$(existing_netns)$(existing_veths)" ]] || ip link show "$BRIDGE" >/dev/null 2>&1; then
        log "removing the nodes' network namespaces and bridge"
        net_down
    fi

    # 4. Accounting: slurmdbd, then MariaDB (clean shutdown via the socket if it answers).
    stop_daemon slurmdbd 20
    if daemon_running mariadbd; then
        log "stopping mariadbd (mariadb-admin shutdown)"
        timeout 20 mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot shutdown >/dev/null 2>&1 || true
        stop_daemon mariadbd 30
    fi

    # 5. munged (system-wide): only when no slurm daemon at all is left on this machine
    #    (e.g. down.sh run with another COVER_HPC_SLURM_BASE must not break a running cluster).
    if any_slurm_daemon; then
        log "leaving munged running: other slurm daemons still use it"
    else
        stop_daemon munged 10
    fi

    log "stopped in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}') s"
}

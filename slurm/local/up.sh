#!/usr/bin/env bash
# Start (idempotently) a real SLURM cluster with accounting on this machine: one compute node
# (this machine), or N compute nodes in network namespaces (COVER_HPC_SLURM_NODES=N).
#
#   slurm/local/up.sh            # prints the env file to source, e.g. /tmp/cover-hpc-slurm/env
#   source "$(slurm/local/up.sh)"
#   COVER_HPC_SLURM_NODES=2 slurm/local/up.sh     # node1 + node2, 4 CPUs each
#
# Variables: COVER_HPC_SLURM_BASE (default /tmp/cover-hpc-slurm), COVER_HPC_SLURM_NODES (default 1),
#            COVER_HPC_SLURM_CPUS (per node; default 8 for one node, 4 for several),
#            COVER_HPC_SLURM_NET (the nodes' /24, default 10.231.7), COVER_HPC_SLURM_TIMEOUT
#            (seconds per wait, default 60).
# Progress goes to stderr; the only stdout line is the path of the env file.
#
# Order: install packages (only if binaries are missing) -> write confs -> (multi-node: bridge
# and namespaces) -> munged -> MariaDB -> slurmdbd (wait until sacctmgr answers) -> slurmctld +
# one slurmd per node (wait until every node is idle and has its slurmd).
# A daemon already running for this base is left alone, so re-running on a healthy cluster is a
# no-op, and re-running on a half-dead one starts only what is missing. If the generated
# configuration differs from the one the running cluster uses, the cluster is restarted
# (state and accounting DB are kept; `down.sh --purge` wipes them).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SLURM_LOCAL_SCRIPT=up     # the node count comes from COVER_HPC_SLURM_NODES only (default 1)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

TIMEOUT="${COVER_HPC_SLURM_TIMEOUT:-60}"
T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}'; }

require_root
[[ "$BASE" == /* ]] || die "COVER_HPC_SLURM_BASE must be an absolute path (got '$BASE')"
[[ "$NODE_CPUS" =~ ^[1-9][0-9]*$ ]] || die "COVER_HPC_SLURM_CPUS must be a positive integer (got '$NODE_CPUS')"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "COVER_HPC_SLURM_NODES must be a positive integer (got '$NODES')"
if multi_node; then check_netns_support; fi
# Unix socket paths are limited to 107 bytes.
(( ${#DB_SOCKET} < 100 )) || die "COVER_HPC_SLURM_BASE is too long for a unix socket path: $DB_SOCKET"

take_lock
# Daemons inherit the working directory: keep them off the caller's (possibly temporary) folder.
cd /

# ============================================================== 1. packages
# Only when a binary is missing (apt-get update + install take ~10-15 s even with cached debs).
install_packages() {
    local missing=() b
    for b in slurmctld slurmd sbatch sacct munged mungekey slurmdbd mariadbd mariadb-install-db mariadb-admin mariadb ip nsenter unshare; do
        command -v "$b" >/dev/null 2>&1 || [[ -x "/usr/sbin/$b" ]] || missing+=("$b")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "missing binaries: ${missing[*]} -> installing Debian packages"
    command -v apt-get >/dev/null || die "apt-get not found: install slurmctld slurmd slurm-client munge slurmdbd mariadb-server by hand"

    # Package postinsts try to start munge/slurm/mariadb through invoke-rc.d. Where no
    # policy-rc.d forbids that (this VM has one that exits 101), put a temporary one in place:
    # the daemons are started below with our own configuration, not the system one.
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local rc=0
    {
        apt-get -o DPkg::Lock::Timeout=120 update &&
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends \
            slurmctld slurmd slurm-client munge slurmdbd mariadb-server iproute2 util-linux
    } >&2 || rc=$?
    [[ $own_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
    [[ $rc -eq 0 ]] || die "apt-get failed (rc=$rc)"
    log "packages installed ($(elapsed) s)"
}
install_packages

# ============================================================== 2. configuration
mkdir -p "$ETC" "$LOG" "$RUN" "$STATE/ctld" "$STATE/d" "$DB"
touch "$MARKER"

NODE="$(hostname -s)"
MEM_KB=$(awk '/^MemTotal:/ {print $2; exit}' /proc/meminfo)
REAL_MEM=$(( MEM_KB / 1024 - 1024 ))        # MemTotal - 1 GiB, in MiB
(( REAL_MEM >= 512 )) || REAL_MEM=512

NODE_LIST=$(IFS=,; echo "${NODE_NAMES[*]}")

# One NodeName line per compute node. Several nodes share this machine's memory: each
# advertises all of it (nominal; SlurmdParameters=config_overrides accepts it).
node_lines() {
    local i
    for i in "${!NODE_NAMES[@]}"; do
        echo "NodeName=${NODE_NAMES[i]} NodeAddr=${NODE_ADDRS[i]} CPUs=$NODE_CPUS RealMemory=$REAL_MEM State=UNKNOWN"
    done
}

# Name resolution inside the nodes: each node's hostname must resolve to its own bridge address
# (gloo binds and advertises what the hostname resolves to; 127.0.0.1 would hang the job), and
# other nodes' names must resolve too (torch's MASTER_ADDR is the first node's name).
gen_hosts() {
    local i
    echo "127.0.0.1 localhost"
    echo "$CTL_ADDR $NODE"
    for i in "${!NODE_NAMES[@]}"; do
        echo "${NODE_ADDRS[i]} ${NODE_NAMES[i]}"
    done
}

gen_slurm_conf() {
    cat <<EOF
# Generated by slurm/local/up.sh -- do not edit (it is rewritten on every up.sh).
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE($CTL_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire (min 5, default 120) is also the delay before a requeued job may start again
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
# cgroup-free: no cgroup.conf needed, works in containers/micro-VMs
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.%n.pid
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.%n.log
# a node whose slurmd stopped answering is DOWN after 20 s (default 300) and its jobs end
SlurmdTimeout=20
SlurmctldDebug=info
SlurmdDebug=info
# fast scheduling: arrays / requeued jobs start within a second instead of after 3-60 s
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# lets the node advertise more CPUs than the machine has (parallel job slots)
SlurmdParameters=config_overrides
JobRequeue=1
MailProg=/bin/true
# a job whose dependency can never be satisfied is cancelled instead of pending forever
DependencyParameters=kill_invalid_depend
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# 22.05 spelling (PreemptParameters=send_user_signal is fatal here)
SlurmctldParameters=preempt_send_user_signal
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$CTL_ADDR
AccountingStoragePort=$SLURMDBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=300
$(node_lines)
PartitionName=debug Nodes=$NODE_LIST Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=10
PartitionName=high Nodes=$NODE_LIST MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
}

gen_slurmdbd_conf() {
    cat <<EOF
# Generated by slurm/local/up.sh -- do not edit.
AuthType=auth/munge
DbdAddr=$CTL_ADDR
DbdHost=$NODE
DbdPort=$SLURMDBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

# Write $2 (content) to $1 only if it differs; return 0 if the file changed.
write_if_changed() {
    local file="$1" content="$2" mode="$3" tmp
    if [[ -f "$file" ]] && [[ "$(cat "$file")" == "$content" ]]; then
        return 1
    fi
    tmp="$file.tmp.$$"
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$file"
    return 0
}

CONF_CHANGED=0
SLURM_CONF_TEXT="$(gen_slurm_conf)"
DBD_CONF_TEXT="$(gen_slurmdbd_conf)"
if [[ -f "$CONF" && "$(cat "$CONF")" != "$SLURM_CONF_TEXT" ]]; then CONF_CHANGED=1; fi
if [[ -f "$DBD_CONF" && "$(cat "$DBD_CONF")" != "$DBD_CONF_TEXT" ]]; then CONF_CHANGED=1; fi
HOSTS_TEXT="$(gen_hosts)"

write_env() {
    write_if_changed "$ENV_FILE" "export SLURM_CONF=$CONF" 644 || true
}

# ============================================================== 3. already up?
if [[ $CONF_CHANGED -eq 0 ]] && cluster_healthy; then
    write_env
    log "cluster already up and healthy ($BASE: $(nodes_summary)); nothing to do"
    echo "$ENV_FILE"
    exit 0
fi

if [[ $CONF_CHANGED -eq 1 ]]; then
    running=""
    for d in "${DAEMONS[@]}"; do
        if daemon_any "$d"; then running+=" $d"; fi
    done
    if [[ -n "$running" ]]; then
        log "configuration changed; restarting the running daemons:$running (jobs are cancelled)"
        stop_cluster
    fi
fi
write_if_changed "$CONF" "$SLURM_CONF_TEXT" 644 || true
write_if_changed "$DBD_CONF" "$DBD_CONF_TEXT" 600 || true   # slurmdbd insists on 600 (it has a password)
write_if_changed "$HOSTS_FILE" "$HOSTS_TEXT" 644 || true
write_env

# ============================================================== 3b. the nodes' network
if multi_node; then
    net_up
    log "network: bridge $BRIDGE $CTL_ADDR/24, nodes ${NODE_NAMES[*]} at ${NODE_ADDRS[*]}"
elif [[ -n "$(existing_netns)$(existing_veths)" ]] || ip link show "$BRIDGE" >/dev/null 2>&1; then
    net_down     # left over from a multi-node cluster that was not stopped
fi

# ============================================================== 4. munged
munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

if daemon_running munged && munge_works; then
    log "munged already running (pid $(munged_pids | head -n1))"
else
    stop_daemon munged 10     # a munged that runs but does not answer
    # The munge postinst creates the key; create one if it is missing.
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key --force
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    # /run/munge is normally made by the init system (there is none here).
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    log "starting munged"
    # --force: start even if a stale socket from a dead munged is left in /run/munge.
    runuser -u munge -- /usr/sbin/munged --force </dev/null >>"$LOG/munged.stdout" 2>&1 9>&- \
        || { show_log /var/log/munge/munged.log; die "munged failed to start"; }
    wait_daemon "$TIMEOUT" munged "munge -n | unmunge" /var/log/munge/munged.log munge_works \
        || die "munged does not answer"
fi

# ============================================================== 5. MariaDB (accounting storage)
# Own instance: datadir, socket, pidfile under $BASE, port 3307 on 127.0.0.1; no system
# my.cnf (--no-defaults), so an existing system MariaDB on 3306 is not disturbed.
if daemon_running mariadbd; then
    log "mariadbd already running (pid $(mariadb_pids | head -n1))"
else
    if [[ ! -d "$DB_DATADIR/mysql" ]]; then
        log "initialising MariaDB datadir $DB_DATADIR"
        rm -rf "$DB_DATADIR.partial"
        # Into a scratch folder first, so an interrupted init is not mistaken for a done one.
        mariadb-install-db --no-defaults --user=root --datadir="$DB_DATADIR.partial" \
            --skip-test-db --auth-root-authentication-method=socket \
            </dev/null >>"$LOG/mariadb-install.log" 2>&1 9>&- \
            || { show_log "$LOG/mariadb-install.log"; die "mariadb-install-db failed"; }
        mv "$DB_DATADIR.partial" "$DB_DATADIR"
    fi
    rm -f "$DB_SOCKET" "$DB_PIDFILE"
    log "starting mariadbd (port $DB_PORT)"
    # mariadbd does not daemonize: setsid + nohup + & detach it from this script and its
    # caller (stdio to files, lock fd closed, so a caller reading our output does not hang).
    setsid nohup mariadbd --no-defaults --user=root --datadir="$DB_DATADIR" \
        --socket="$DB_SOCKET" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$DB_PIDFILE" --log-error="$LOG/mariadb.log" --innodb-lock-wait-timeout=900 \
        </dev/null >>"$LOG/mariadb.stdout" 2>&1 9>&- &
    disown || true
    wait_daemon "$TIMEOUT" mariadbd "MariaDB to answer on $DB_SOCKET" "$LOG/mariadb.log" db_answers \
        || die "MariaDB does not answer"
fi
# Idempotent: the slurmdbd user and its grants (slurmdbd creates the database itself).
timeout 30 mariadb --no-defaults --socket="$DB_SOCKET" -uroot <<SQL || die "could not create the MariaDB user for slurmdbd"
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON \`$DB_NAME\`.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL

# ============================================================== 6. slurmdbd
# start_daemon NAME: start /usr/sbin/NAME (it daemonizes) unless this cluster's already runs.
start_daemon() {
    local name="$1"
    if daemon_running "$name"; then
        log "$name already running (pid $(our_pids "$name" | head -n1))"
        return 0
    fi
    log "starting $name"
    "/usr/sbin/$name" </dev/null >>"$LOG/$name.stdout" 2>&1 9>&- \
        || { show_log "$LOG/$name.log"; die "$name failed to start"; }
}

start_daemon slurmdbd     # finds slurmdbd.conf next to $SLURM_CONF (exported by lib.sh)
# The race: slurmdbd daemonizes before it listens. A slurmctld started too early (no state
# yet) dies with "You are running with a database but for some reason we have no TRES from
# it" and slurmd then retries forever. So wait until sacctmgr gets an answer.
wait_daemon "$TIMEOUT" slurmdbd "slurmdbd to answer (sacctmgr -n list cluster)" "$LOG/slurmdbd.log" dbd_answers \
    || die "slurmdbd does not answer"

# ============================================================== 7. slurmctld + slurmd
start_daemon slurmctld    # no -c: recovers jobs/node state from StateSaveLocation (kept until down.sh --purge)
for name in "${NODE_NAMES[@]}"; do
    pid=$(node_slurmd_pids "$name" | head -n1)
    if [[ -n "$pid" ]]; then
        log "slurmd of $name already running (pid $pid)"
    else
        log "starting slurmd of $name"
        start_slurmd "$name" || { show_log "$LOG/slurmd.$name.log"; die "slurmd of $name failed to start"; }
    fi
done

# sinfo takes ~10 s to fail while slurmctld is down: the deadline is wall-clock, and a dead
# daemon is detected at once.
wait_daemon "$TIMEOUT" "slurmctld slurmd" "every node (${NODE_NAMES[*]}) to be idle in sinfo" "$LOG/slurmctld.log" \
    nodes_usable || { show_log "$LOG/slurmd.${NODE_NAMES[0]}.log" 20; die "the nodes did not come up"; }

log "cluster up in $(elapsed) s: $BASE (${#NODE_NAMES[@]} node(s), $NODE_CPUS CPUs and ${REAL_MEM} MiB each; $(nodes_summary))"
log "use it with:  source $ENV_FILE"
echo "$ENV_FILE"

#!/usr/bin/env bash
# Show the state of the local SLURM cluster started by up.sh.
#
#   slurm/local/status.sh     # exit 0 when healthy (all daemons run, every node usable), else 1
#
# Set COVER_HPC_SLURM_NODES as for up.sh to check a multi-node cluster.
#
# Read-only; needs no lock. Runs as any user, though other users' processes may not be
# fully visible (root is expected).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

echo "base:       $BASE"
if conf_exists; then
    echo "SLURM_CONF: $CONF"
else
    echo "SLURM_CONF: $CONF (missing: up.sh has not run)"
fi
echo "nodes:      ${NODE_NAMES[*]} ($( multi_node && echo "network namespaces on $BRIDGE $CTL_ADDR/24" || echo "this machine"))"
for d in "${DAEMONS[@]}"; do
    if [[ "$d" == slurmd ]]; then
        for name in "${NODE_NAMES[@]}"; do
            pids=$(node_slurmd_pids "$name" | tr '\n' ' ')
            printf '  %-10s %s\n' "slurmd" "$([[ -n "$pids" ]] && echo "running on $name (pid ${pids% })" || echo "not running on $name")"
        done
        continue
    fi
    pids=$(daemon_pids "$d" | tr '\n' ' ')
    if [[ -n "$pids" ]]; then
        printf '  %-10s running (pid %s)\n' "$d" "${pids% }"
    else
        printf '  %-10s not running\n' "$d"
    fi
done

# Only ask the clients when they can answer quickly (missing conf: ~60 s hang; no slurmctld: ~10 s).
if conf_exists && daemon_running slurmctld; then
    echo "sinfo:"
    timeout 15 sinfo 2>&1 | sed 's/^/  /' || echo "  (sinfo failed)"
else
    echo "sinfo: (skipped: slurmctld not running)"
fi

if cluster_healthy; then
    echo "healthy: yes"
    exit 0
fi
echo "healthy: no"
exit 1

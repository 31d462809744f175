#!/usr/bin/env bash
# Fail and restore one compute node of a multi-node local cluster (COVER_HPC_SLURM_NODES >= 2),
# for tests of what a job does when it loses a node.
#
#   slurm/local/node.sh kill-slurmd node2   # SIGKILL the node's slurmd only; its job steps run on
#                                          # unsupervised until the controller declares the node
#                                          # DOWN (SlurmdTimeout, 20 s) and ends their jobs
#   slurm/local/node.sh crash node2         # SIGKILL everything the node runs (slurmd, slurmstepd,
#                                          # job processes): a machine that went away
#   slurm/local/node.sh start node2         # start its slurmd again and wait until the node is
#                                          # usable (ReturnToService=2 returns a DOWN node)
#
# The node count is read from the running cluster's slurm.conf (or COVER_HPC_SLURM_NODES).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

usage() { sed -n '2,13p' "$0" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action="$1" node="$2"

require_root
multi_node || die "node.sh needs a multi-node cluster (COVER_HPC_SLURM_NODES=2 slurm/local/up.sh)"
known=" ${NODE_NAMES[*]} "
[[ "$known" == *" $node "* ]] || die "unknown node '$node'; this cluster has:${known% }"
TIMEOUT="${COVER_HPC_SLURM_TIMEOUT:-60}"

case "$action" in
    kill-slurmd)
        pids=$(node_slurmd_pids "$node")
        [[ -n "$pids" ]] || die "slurmd of $node is not running"
        log "killing slurmd of $node (pid $(tr '\n' ' ' <<<"$pids" | sed 's/ $//'))"
        # shellcheck disable=SC2086
        kill -KILL $pids
        ;;
    crash)
        keep=" $(self_and_ancestors | tr '\n' ' ') "
        pids=""
        for pid in $(netns_pids "$node"); do
            [[ "$keep" == *" $pid "* ]] || pids+=" $pid"
        done
        [[ -n "$pids" ]] || die "nothing runs on $node"
        log "crashing $node: SIGKILL to$pids"
        # shellcheck disable=SC2086
        kill -KILL $pids
        ;;
    start)
        if [[ -n "$(node_slurmd_pids "$node")" ]]; then
            log "slurmd of $node already running"
        else
            log "starting slurmd of $node"
            start_slurmd "$node" || { show_log "$LOG/slurmd.$node.log"; die "slurmd of $node failed to start"; }
        fi
        node_back() { [[ "$(node_state "$node")" =~ ^(idle|mixed|allocated|completing|planned)$ ]]; }
        wait_daemon "$TIMEOUT" "slurmctld slurmd" "$node to be usable in sinfo" "$LOG/slurmd.$node.log" node_back \
            || die "$node did not come back"
        log "$node is back: $(node_state "$node")"
        ;;
    *) usage ;;
esac

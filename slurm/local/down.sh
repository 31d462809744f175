#!/usr/bin/env bash
# Stop the local SLURM cluster started by up.sh.
#
#   slurm/local/down.sh           # stop; keep $BASE (job ids, accounting DB, logs survive)
#   slurm/local/down.sh --purge   # stop and remove $BASE (next up.sh starts from scratch)
#
# Order: cancel every job (slurmd's shutdown would leave running slurmstepds behind) ->
# scontrol shutdown (slurmctld + slurmd) -> kill orphan slurmstepds/job processes of this
# cluster -> (multi-node) kill what is left in the nodes' namespaces, delete veths, namespaces
# and bridge -> slurmdbd -> mariadbd -> munged. Every wait has a wall-clock deadline, after
# which the process is SIGKILLed. Safe to run when nothing is up.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

PURGE=0
for arg in "$@"; do
    case "$arg" in
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (use --purge)" ;;
    esac
done

require_root
take_lock
cd /

anything=0
for d in "${DAEMONS[@]}"; do
    if daemon_any "$d"; then anything=1; fi
done
if [[ -n "$(existing_netns)$(existing_veths)" ]] || ip link show "$BRIDGE" >/dev/null 2>&1; then anything=1; fi
if [[ $anything -eq 1 || -n "$(orphan_job_pids)" ]]; then
    stop_cluster
else
    log "nothing running for $BASE"
fi

if [[ $PURGE -eq 1 && -e "$BASE" ]]; then
    # Only remove a folder up.sh made (it holds the marker), never / or a relative path.
    if [[ "$BASE" != /* || "$BASE" == / ]]; then
        die "refusing to purge '$BASE'"
    fi
    if [[ ! -e "$MARKER" ]]; then
        die "refusing to purge $BASE: no $MARKER (not made by up.sh)"
    fi
    rm -rf "$BASE"
    log "removed $BASE"
fi
exit 0

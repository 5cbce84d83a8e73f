#!/usr/bin/env bash
# Stop the dev SLURM cluster started by start.sh (idempotent).
# Default: stops slurmd, slurmctld, slurmdbd, MariaDB and munged, so nothing
# is left running. The state folder is kept (jobs, accounting DB, munge key),
# so the next start.sh is quick and sacct still knows the old jobs.
# Options:
#   --slurm-only  stop only slurmd, slurmctld, slurmdbd (keep MariaDB + munged)
#   --purge       after stopping everything, delete the state folder
# Jobs still running when slurmd stops are left to their slurmstepd; cancel
# them first (scancel -u $USER) if you want a clean slate.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_common.sh
source "$HERE/_common.sh"

SLURM_ONLY=0
PURGE=0
for arg in "$@"; do
    case "$arg" in
        --slurm-only) SLURM_ONLY=1 ;;
        --purge) PURGE=1 ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (use --slurm-only, --purge or --help)" ;;
    esac
done
[ "$SLURM_ONLY" -eq 1 ] && [ "$PURGE" -eq 1 ] && die "--slurm-only and --purge exclude each other"

# stop_daemon NAME PIDFILE COMM TIMEOUT NEEDLE [cmdline|environ]
# Stops the daemon named in PIDFILE; also any daemon of *this* state folder
# whose pid file went missing (matched on NEEDLE in its cmdline/environment).
stop_daemon() {
    local name="$1" pidfile="$2" comm="$3" timeout="$4" needle="$5" where="${6:-cmdline}" pid
    stop_pidfile "$name" "$pidfile" "$comm" "$timeout"
    for pid in $(orphan_pids "$comm" "$needle" "$where"); do
        log "found $name (pid $pid) of $D without a pid file"
        stop_pid "$name" "$pid" "$timeout"
    done
}

if [ "$(id -u)" -ne 0 ]; then
    # Non-root can only have nothing to do.
    for pf in "$SLURMD_PID:slurmd" "$CTLD_PID:slurmctld" "$DBD_PID:slurmdbd" "$DB_PID:mariadbd" "$MUNGE_PID:munged"; do
        if pid_alive "${pf%%:*}" "${pf##*:}"; then need_root; fi
    done
fi

stop_daemon slurmd "$SLURMD_PID" slurmd 20 "$SLURM_CONF_FILE"
stop_daemon slurmctld "$CTLD_PID" slurmctld 20 "$SLURM_CONF_FILE"
stop_daemon slurmdbd "$DBD_PID" slurmdbd 20 "SLURM_CONF=$SLURM_CONF_FILE" environ
if [ "$SLURM_ONLY" -eq 0 ]; then
    stop_daemon mariadbd "$DB_PID" mariadbd 60 "--datadir=$DB_DATA"
    stop_daemon munged "$MUNGE_PID" munged 10 "--key-file=$MUNGE_KEY"
fi

if [ "$PURGE" -eq 1 ]; then
    case "$D" in
        / | /tmp | /root | /home | /work | "") die "refusing to delete '$D'" ;;
    esac
    # Leftover job processes may still hold files; they do not stop the removal.
    rm -rf "$D"
    log "removed state folder $D"
fi
log "stopped ($([ "$SLURM_ONLY" -eq 1 ] && echo "slurm daemons only" || echo "all daemons"))"

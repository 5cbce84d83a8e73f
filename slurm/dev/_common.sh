# shellcheck shell=bash disable=SC2034
# Shared settings and helpers for slurm/dev/{start,stop,check}.sh.
# Sourced, not executed. Everything lives under one state folder with
# absolute paths, so the scripts work from any cwd.

# ---- settings (environment overrides) -------------------------------------
PSS_SLURM_DIR="${PSS_SLURM_DIR:-/tmp/pss-slurm}"
case "$PSS_SLURM_DIR" in
    /*) ;;
    *) PSS_SLURM_DIR="$(pwd)/$PSS_SLURM_DIR" ;;
esac
PSS_SLURM_DIR="${PSS_SLURM_DIR%/}"
export PSS_SLURM_DIR
PSS_SLURM_CLUSTER="${PSS_SLURM_CLUSTER:-pssdev}"
PSS_SLURM_PARTITION="${PSS_SLURM_PARTITION:-debug}"
PSS_SLURM_START_TIMEOUT="${PSS_SLURM_START_TIMEOUT:-60}"
PSS_SLURM_CTLD_PORT="${PSS_SLURM_CTLD_PORT:-6817}"
PSS_SLURM_SLURMD_PORT="${PSS_SLURM_SLURMD_PORT:-6818}"
PSS_SLURM_DBD_PORT="${PSS_SLURM_DBD_PORT:-6819}"
PSS_SLURM_DB_PORT="${PSS_SLURM_DB_PORT:-13306}"

# ---- derived paths -----------------------------------------------------------
D="$PSS_SLURM_DIR"
ETC="$D/etc"
SLURM_CONF_FILE="$ETC/slurm.conf"
SLURMDBD_CONF_FILE="$ETC/slurmdbd.conf"
LOGDIR="$D/log"
RUNDIR="$D/run"
SPOOL_CTLD="$D/spool/slurmctld"
SPOOL_D="$D/spool/slurmd"
MUNGE_DIR="$D/munge"
MUNGE_KEY="$MUNGE_DIR/munge.key"
# Slurm 22.05 clients ignore AuthInfo=socket= on some paths (sacctmgr -> slurmdbd),
# so munged must listen on the compiled-in default socket.
MUNGE_SOCKET="/run/munge/munge.socket.2"
MUNGE_PID="$MUNGE_DIR/munged.pid"
MUNGE_LOG="$MUNGE_DIR/munged.log"
MUNGE_SEED="$MUNGE_DIR/munged.seed"
DB_DIR="$D/mysql"
DB_DATA="$DB_DIR/data"
DB_SOCKET="$DB_DIR/mysqld.sock"
DB_PID="$DB_DIR/mysqld.pid"
DB_LOG="$DB_DIR/mariadb.log"
CTLD_PID="$RUNDIR/slurmctld.pid"
SLURMD_PID="$RUNDIR/slurmd.pid"
DBD_PID="$RUNDIR/slurmdbd.pid"
CTLD_LOG="$LOGDIR/slurmctld.log"
SLURMD_LOG="$LOGDIR/slurmd.log"
DBD_LOG="$LOGDIR/slurmdbd.log"
ENV_FILE="$D/env.sh"
NODE_NAME="$(hostname -s)"

export SLURM_CONF="$SLURM_CONF_FILE"
export PATH="$PATH:/usr/sbin:/sbin"

# ---- helpers -----------------------------------------------------------------
_SCRIPT_NAME="slurm/dev/$(basename "$0")"
log() { echo "$_SCRIPT_NAME: $*" >&2; }
die() { echo "$_SCRIPT_NAME: ERROR: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it starts munged/mariadbd/slurm daemons as their users); try: sudo -E bash $0"
}

# pid_alive PIDFILE COMM -> 0 if the pid in PIDFILE is a live process named COMM
pid_alive() {
    local pidfile="$1" comm="$2" pid
    [ -s "$pidfile" ] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [ -n "$pid" ] || return 1
    proc_running "$pid" || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}

# proc_running PID -> 0 if PID exists and is not a zombie (our init may reap late)
proc_running() {
    local st
    st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

pid_of() { tr -dc '0-9' <"$1"; }

# stop_pid NAME PID [TIMEOUT]: SIGTERM, wait, then SIGKILL.
stop_pid() {
    local name="$1" pid="$2" timeout="${3:-20}" i t0
    t0=$(date +%s.%N)
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        proc_running "$pid" || break
        sleep 0.1
    done
    if proc_running "$pid"; then
        log "$name (pid $pid) did not exit after ${timeout}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    log "  $name stopped ($(awk "BEGIN{printf \"%.1f\", $(date +%s.%N)-$t0}") s)"
}

# stop_pidfile NAME PIDFILE COMM [TIMEOUT]: stop the COMM process named in PIDFILE, if alive.
stop_pidfile() {
    local name="$1" pidfile="$2" comm="$3" timeout="${4:-20}"
    if pid_alive "$pidfile" "$comm"; then
        stop_pid "$name" "$(pid_of "$pidfile")" "$timeout"
    fi
    rm -f "$pidfile"
}

# wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds or time runs out
wait_for() {
    local secs="$1" end
    shift
    end=$(( $(date +%s) + secs ))
    while :; do
        "$@" && return 0
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.2
    done
}

# port_busy PORT -> 0 if something accepts TCP connections on 127.0.0.1:PORT
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ensure_port_free NAME PORT VAR: die with a clear message if PORT is taken
ensure_port_free() {
    if port_busy "$2"; then
        die "cannot start $1: port $2 is already in use (another SLURM/MariaDB, or a dev cluster started with a different PSS_SLURM_DIR?). Stop it (PSS_SLURM_DIR=<its dir> slurm/dev/stop.sh) or set $3 to a free port."
    fi
}

# orphan_pids COMM NEEDLE [cmdline|environ]: pids of live COMM processes whose
# command line (or environment) contains NEEDLE -- used by stop.sh to find
# daemons of this state folder whose pid file was lost.
orphan_pids() {
    local comm="$1" needle="$2" where="${3:-cmdline}" f pid
    for f in /proc/[0-9]*/comm; do
        pid="${f#/proc/}"; pid="${pid%/comm}"
        [ "$(cat "$f" 2>/dev/null)" = "$comm" ] || continue
        proc_running "$pid" || continue
        if tr '\0' '\n' <"/proc/$pid/$where" 2>/dev/null | grep -qF -- "$needle"; then
            echo "$pid"
        fi
    done
}

munge_ok() {
    [ -S "$MUNGE_SOCKET" ] && munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

db_ok() {
    [ -S "$DB_SOCKET" ] && mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot --connect-timeout=2 ping >/dev/null 2>&1
}

ctld_ok() { timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; }

dbd_ok() { timeout 10 sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }

# node_state -> e.g. idle, mixed, allocated, down*, drained, ... (empty if unknown)
node_state() { sinfo -h -N -n "$NODE_NAME" -o '%T' 2>/dev/null | head -n1; }

node_healthy() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

show_logs() {
    local f
    for f in "$CTLD_LOG" "$SLURMD_LOG" "$DBD_LOG" "$MUNGE_LOG" "$DB_LOG"; do
        if [ -f "$f" ]; then
            echo "----- tail -n 25 $f -----" >&2
            tail -n 25 "$f" >&2 || true
        fi
    done
}

#!/usr/bin/env bash
# Start (idempotently) a real one-node SLURM cluster on this machine:
# munged -> MariaDB (127.0.0.1) -> slurmdbd -> slurmctld -> slurmd.
# All config, state, logs and pid files live in ${PSS_SLURM_DIR:-/tmp/pss-slurm}.
# Components that are already up with an unchanged config are left alone, so
# a second run on a healthy cluster returns in about a second.
# Ends by writing ${PSS_SLURM_DIR}/env.sh (export SLURM_CONF=...) and printing
# its path on stdout (the only thing printed on stdout).
#
# Options:  --check   also run check.sh (one sbatch job, verified with sacct)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_common.sh
source "$HERE/_common.sh"

RUN_CHECK=0
for arg in "$@"; do
    case "$arg" in
        --check) RUN_CHECK=1 ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (use --check or --help)" ;;
    esac
done

need_root
for c in slurmctld slurmd slurmdbd sacctmgr sinfo scontrol munged mungekey munge unmunge mariadbd mariadb mariadb-admin mariadb-install-db; do
    command -v "$c" >/dev/null 2>&1 || die "'$c' not found; run slurm/dev/install.sh first"
done
id munge >/dev/null 2>&1 || die "user 'munge' missing; run slurm/dev/install.sh first"
id mysql >/dev/null 2>&1 || die "user 'mysql' missing; run slurm/dev/install.sh first"

T0=$(date +%s.%N)

# Fail early if another cluster (other PSS_SLURM_DIR, or a system SLURM) holds our ports.
pid_alive "$DB_PID" mariadbd || ensure_port_free MariaDB "$PSS_SLURM_DB_PORT" PSS_SLURM_DB_PORT
pid_alive "$DBD_PID" slurmdbd || ensure_port_free slurmdbd "$PSS_SLURM_DBD_PORT" PSS_SLURM_DBD_PORT
pid_alive "$CTLD_PID" slurmctld || ensure_port_free slurmctld "$PSS_SLURM_CTLD_PORT" PSS_SLURM_CTLD_PORT
pid_alive "$SLURMD_PID" slurmd || ensure_port_free slurmd "$PSS_SLURM_SLURMD_PORT" PSS_SLURM_SLURMD_PORT

# ---- folders ---------------------------------------------------------------------
mkdir -p "$D"
chmod 755 "$D"
mkdir -p "$ETC" "$LOGDIR" "$RUNDIR" "$SPOOL_CTLD" "$SPOOL_D" "$MUNGE_DIR" "$DB_DIR" "$DB_DATA"
chmod 755 "$ETC" "$LOGDIR" "$RUNDIR"
chmod 700 "$SPOOL_CTLD" "$SPOOL_D"
chown munge:munge "$MUNGE_DIR"; chmod 755 "$MUNGE_DIR"
chown mysql:mysql "$DB_DIR" "$DB_DATA"; chmod 755 "$DB_DIR"; chmod 700 "$DB_DATA"
for u in munge mysql; do
    runuser -u "$u" -- test -x "$D" ||
        die "user '$u' cannot reach $D (a parent folder is not traversable); choose another PSS_SLURM_DIR"
done

# ---- 1. munge ----------------------------------------------------------------------
if [ ! -s "$MUNGE_KEY" ]; then
    log "creating munge key $MUNGE_KEY"
    rm -f "$MUNGE_KEY"
    mungekey --create --keyfile="$MUNGE_KEY" || die "mungekey failed"
fi
chown munge:munge "$MUNGE_KEY"; chmod 400 "$MUNGE_KEY"

if munge_ok; then
    # Ours, or a system munged on the default socket: either serves this one-node cluster.
    pid_alive "$MUNGE_PID" munged || log "using the munged already answering on $MUNGE_SOCKET (not started by this script)"
else
    stop_pidfile munged "$MUNGE_PID" munged 5
    mkdir -p "$(dirname "$MUNGE_SOCKET")"
    chown munge:munge "$(dirname "$MUNGE_SOCKET")"; chmod 755 "$(dirname "$MUNGE_SOCKET")"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    log "starting munged (as user munge, key $MUNGE_KEY, socket $MUNGE_SOCKET)"
    runuser -u munge -- munged --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCKET" \
        --pid-file="$MUNGE_PID" --log-file="$MUNGE_LOG" --seed-file="$MUNGE_SEED" ||
        { show_logs; die "munged failed to start (see $MUNGE_LOG)"; }
    wait_for 10 munge_ok || { show_logs; die "munged does not answer on $MUNGE_SOCKET"; }
fi

# ---- 2. MariaDB on 127.0.0.1 ----------------------------------------------------
DB_PASS="pss-slurm-dev"
if pid_alive "$DB_PID" mariadbd && db_ok; then
    :
else
    stop_pidfile mariadbd "$DB_PID" mariadbd 30
    if [ ! -d "$DB_DATA/mysql" ]; then
        log "initialising MariaDB data folder $DB_DATA"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DATA" \
            --auth-root-authentication-method=socket --skip-test-db >"$DB_DIR/install-db.log" 2>&1 ||
            { tail -n 30 "$DB_DIR/install-db.log" >&2; die "mariadb-install-db failed (see $DB_DIR/install-db.log)"; }
    fi
    ensure_port_free MariaDB "$PSS_SLURM_DB_PORT" PSS_SLURM_DB_PORT
    touch "$DB_LOG"; chown mysql:mysql "$DB_LOG"
    log "starting MariaDB on 127.0.0.1:$PSS_SLURM_DB_PORT (as user mysql)"
    setsid nohup mariadbd --no-defaults --user=mysql --datadir="$DB_DATA" \
        --socket="$DB_SOCKET" --pid-file="$DB_PID" --log-error="$DB_LOG" \
        --bind-address=127.0.0.1 --port="$PSS_SLURM_DB_PORT" --skip-name-resolve \
        --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=256M \
        </dev/null >>"$DB_LOG" 2>&1 &
    wait_for 30 db_ok || { show_logs; die "MariaDB did not come up within 30 s (see $DB_LOG)"; }
fi
mariadb --no-defaults --socket="$DB_SOCKET" -uroot <<SQL || die "could not create the slurm database user"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

# ---- 3. configuration -------------------------------------------------------------
# Real hardware as slurmd sees it; RealMemory a bit below the machine's memory.
HW="$(slurmd -C 2>/dev/null | head -n1)" || true
hw_field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS="$(hw_field CPUs)"; CPUS="${CPUS:-$(nproc)}"
SOCKETS="$(hw_field SocketsPerBoard)"; SOCKETS="${SOCKETS:-1}"
CORES="$(hw_field CoresPerSocket)"; CORES="${CORES:-$CPUS}"
THREADS="$(hw_field ThreadsPerCore)"; THREADS="${THREADS:-1}"
MEM_MB="$(hw_field RealMemory)"
[ -n "$MEM_MB" ] || MEM_MB=$(( $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024 ))
# rounded down to 256 MB so that small fluctuations of MemTotal do not rewrite slurm.conf
REAL_MEM=$(( MEM_MB * 95 / 100 / 256 * 256 ))
# Each CPU may be shared by this many jobs (partition OverSubscribe=FORCE:N),
# so that >= 8 one-CPU jobs run at once even on a 2-core machine.
OVERSUB="${PSS_SLURM_OVERSUBSCRIBE:-$(( (8 + CPUS - 1) / CPUS > 4 ? (8 + CPUS - 1) / CPUS : 4 ))}"
DEF_MEM_PER_CPU="${PSS_SLURM_DEF_MEM_PER_CPU:-1024}"
CRED_EXPIRE="${PSS_SLURM_CRED_EXPIRE:-30}"

new_conf() {  # new_conf FILE MODE < content ; writes FILE only if the content changed
    local f="$1" mode="$2" tmp
    tmp="$(mktemp "$f.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [ -f "$f" ] && cmp -s "$tmp" "$f"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$f"
    return 0
}

new_conf "$SLURM_CONF_FILE" 644 <<EOF || true
# Generated by slurm/dev/start.sh -- edits are overwritten.
ClusterName=$PSS_SLURM_CLUSTER
SlurmctldHost=$NODE_NAME(127.0.0.1)
SlurmctldPort=$PSS_SLURM_CTLD_PORT
SlurmdPort=$PSS_SLURM_SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
PluginDir=/usr/lib/x86_64-linux-gnu/slurm-wlm
# scheduling
SchedulerType=sched/backfill
# Re-test pending jobs often (defaults 60 s / 30 s), so a job whose BeginTime
# passes (e.g. after a requeue) starts within seconds.
SchedulerParameters=sched_interval=5,bf_interval=5
# Small on purpose (SLURM's default is 1001): a sweep larger than this must be
# split into several job arrays, and the tests check that it is.
MaxArraySize=${PSS_SLURM_MAX_ARRAY_SIZE:-8}
SelectType=select/cons_tres
SelectTypeParameters=${PSS_SLURM_SELECT_PARAMS:-CR_Core_Memory}
DefMemPerCPU=$DEF_MEM_PER_CPU
PriorityType=priority/basic
KillWait=5
InactiveLimit=0
MinJobAge=300
Waittime=0
# accounting (needed for sacct, hence for submitit's job.state)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$PSS_SLURM_DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# the node and partition
NodeName=$NODE_NAME NodeAddr=127.0.0.1 NodeHostname=$NODE_NAME CPUs=$CPUS Boards=1 SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PSS_SLURM_PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:$OVERSUB
EOF
# PluginDir: Debian's default; fall back to the compiled-in default elsewhere.
if [ ! -d /usr/lib/x86_64-linux-gnu/slurm-wlm ]; then
    sed -i '/^PluginDir=/d' "$SLURM_CONF_FILE"
fi

new_conf "$SLURMDBD_CONF_FILE" 600 <<EOF || true
# Generated by slurm/dev/start.sh -- edits are overwritten.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$PSS_SLURM_DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$DBD_LOG
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$PSS_SLURM_DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chown root:root "$SLURM_CONF_FILE" "$SLURMDBD_CONF_FILE"
chmod 600 "$SLURMDBD_CONF_FILE"

# A daemon is restarted when the config it was started with (recorded in
# $RUNDIR/<daemon>.conf.sum) differs from the current one.
conf_sum() { cksum <"$1" | awk '{print $1 "-" $2}'; }
started_with_current() { [ -f "$RUNDIR/$1.conf.sum" ] && [ "$(cat "$RUNDIR/$1.conf.sum")" = "$(conf_sum "$2")" ]; }
record_conf() { conf_sum "$2" >"$RUNDIR/$1.conf.sum"; }

# ---- 4. slurmdbd ------------------------------------------------------------------
if pid_alive "$DBD_PID" slurmdbd && started_with_current slurmdbd "$SLURMDBD_CONF_FILE" && dbd_ok; then
    :
else
    if pid_alive "$DBD_PID" slurmdbd; then
        log "slurmdbd is running with an old slurmdbd.conf or not answering; restarting it"
    fi
    stop_pidfile slurmdbd "$DBD_PID" slurmdbd 20
    ensure_port_free slurmdbd "$PSS_SLURM_DBD_PORT" PSS_SLURM_DBD_PORT
    log "starting slurmdbd"
    # slurmdbd takes no -f: it reads slurmdbd.conf next to \$SLURM_CONF.
    slurmdbd || { show_logs; die "slurmdbd failed to start (see $DBD_LOG)"; }
    wait_for 30 dbd_ok || { show_logs; die "slurmdbd did not answer sacctmgr within 30 s (see $DBD_LOG)"; }
    record_conf slurmdbd "$SLURMDBD_CONF_FILE"
fi

# The cluster must be known to slurmdbd before slurmctld registers.
if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$PSS_SLURM_CLUSTER"; then
    log "registering cluster '$PSS_SLURM_CLUSTER' in accounting"
    sacctmgr -i add cluster "$PSS_SLURM_CLUSTER" >/dev/null || die "sacctmgr add cluster $PSS_SLURM_CLUSTER failed"
fi

# ---- 5. slurmctld -----------------------------------------------------------------
if pid_alive "$CTLD_PID" slurmctld && started_with_current slurmctld "$SLURM_CONF_FILE" && ctld_ok; then
    :
else
    if pid_alive "$CTLD_PID" slurmctld; then
        log "slurmctld is running with an old slurm.conf or not answering; restarting it"
    fi
    stop_pidfile slurmctld "$CTLD_PID" slurmctld 20
    ensure_port_free slurmctld "$PSS_SLURM_CTLD_PORT" PSS_SLURM_CTLD_PORT
    log "starting slurmctld"
    slurmctld -f "$SLURM_CONF_FILE" || { show_logs; die "slurmctld failed to start (see $CTLD_LOG)"; }
    wait_for 30 ctld_ok || { show_logs; die "slurmctld did not answer 'scontrol ping' within 30 s (see $CTLD_LOG)"; }
    record_conf slurmctld "$SLURM_CONF_FILE"
fi

# ---- 6. slurmd --------------------------------------------------------------------
if pid_alive "$SLURMD_PID" slurmd && started_with_current slurmd "$SLURM_CONF_FILE"; then
    :
else
    if pid_alive "$SLURMD_PID" slurmd; then
        log "slurmd is running with an old slurm.conf; restarting it"
    fi
    stop_pidfile slurmd "$SLURMD_PID" slurmd 20
    ensure_port_free slurmd "$PSS_SLURM_SLURMD_PORT" PSS_SLURM_SLURMD_PORT
    log "starting slurmd"
    slurmd -f "$SLURM_CONF_FILE" || { show_logs; die "slurmd failed to start (see $SLURMD_LOG)"; }
    record_conf slurmd "$SLURM_CONF_FILE"
fi

# ---- 7. wait for the node ----------------------------------------------------------
deadline=$(( $(date +%s) + PSS_SLURM_START_TIMEOUT ))
resumed=0
until node_healthy; do
    st="$(node_state)"
    case "$st" in
        drain* | down | down~ | fail*)  # left over from an earlier run: put it back in service
            if [ "$resumed" -eq 0 ] && pid_alive "$SLURMD_PID" slurmd; then
                log "node $NODE_NAME is '$st'; resuming it"
                scontrol update NodeName="$NODE_NAME" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        show_logs
        scontrol show node "$NODE_NAME" >&2 || true
        die "node $NODE_NAME not idle after ${PSS_SLURM_START_TIMEOUT}s (state: '${st:-unknown}'); logs above, state folder $D"
    fi
    sleep 0.5
done

# ---- 8. env file ------------------------------------------------------------------
new_conf "$ENV_FILE" 644 <<EOF || true
# Generated by slurm/dev/start.sh; source it to use the dev cluster.
export SLURM_CONF=$SLURM_CONF_FILE
export PSS_SLURM_DIR=$D
export PSS_SLURM_PARTITION=$PSS_SLURM_PARTITION
export PSS_SLURM_CLUSTER=$PSS_SLURM_CLUSTER
EOF

T1=$(date +%s.%N)
log "cluster '$PSS_SLURM_CLUSTER' up: node $NODE_NAME $(node_state), partition '$PSS_SLURM_PARTITION' ($(awk "BEGIN{printf \"%.1f\", $T1-$T0}") s)"
echo "$ENV_FILE"

if [ "$RUN_CHECK" -eq 1 ]; then
    bash "$HERE/check.sh" >&2
fi

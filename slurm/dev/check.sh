#!/usr/bin/env bash
# Smoke-test the dev cluster: submit `sbatch --wrap hostname`, wait for it to
# finish and verify that `sacct` reports it COMPLETED (exit code 0:0).
# Exits non-zero with a clear message otherwise.
#   PSS_SLURM_CHECK_TIMEOUT  seconds to wait for the job (default 90)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_common.sh
source "$HERE/_common.sh"
TIMEOUT="${PSS_SLURM_CHECK_TIMEOUT:-90}"

[ -f "$SLURM_CONF_FILE" ] || die "no $SLURM_CONF_FILE; run slurm/dev/start.sh first"
command -v sbatch >/dev/null 2>&1 || die "sbatch not found; run slurm/dev/install.sh first"
ctld_ok || die "slurmctld is not answering (scontrol ping); run slurm/dev/start.sh"

OUTDIR="$(mktemp -d "${TMPDIR:-/tmp}/pss-slurm-check.XXXXXX")"
trap 'rm -rf "$OUTDIR"' EXIT

T0=$(date +%s.%N)
JOBID="$(sbatch --parsable -p "$PSS_SLURM_PARTITION" -J pss-dev-check -o "$OUTDIR/%j.out" \
    --chdir="$OUTDIR" --wrap hostname)" || die "sbatch failed"
JOBID="${JOBID%%;*}"
log "submitted job $JOBID"

state=""
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
    # sacct is the source of truth (it is what submitit uses for job.state).
    state="$(sacct -n -X -P -j "$JOBID" -o State 2>/dev/null | head -n1 | awk '{print $1}')"
    case "$state" in
        COMPLETED | FAILED | CANCELLED* | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED) break ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        squeue -j "$JOBID" -o '%i %T %r' >&2 2>/dev/null || true
        scancel "$JOBID" 2>/dev/null || true
        show_logs
        die "job $JOBID not finished after ${TIMEOUT}s (sacct state: '${state:-none}')"
    fi
    sleep 0.5
done
T1=$(date +%s.%N)

exitcode="$(sacct -n -X -P -j "$JOBID" -o ExitCode 2>/dev/null | head -n1)"
out="$(cat "$OUTDIR/$JOBID.out" 2>/dev/null || true)"
if [ "$state" != "COMPLETED" ] || [ "$exitcode" != "0:0" ]; then
    sacct -j "$JOBID" -o JobID,JobName,State,ExitCode,NodeList >&2 || true
    show_logs
    die "job $JOBID ended $state (exit $exitcode), expected COMPLETED 0:0; output: '$out'"
fi
[ "$out" = "$NODE_NAME" ] || [ "$out" = "$(hostname)" ] ||
    die "job $JOBID COMPLETED but its output was '$out', expected '$NODE_NAME'"
log "OK: job $JOBID COMPLETED (exit 0:0) on '$out' in $(awk "BEGIN{printf \"%.1f\", $T1-$T0}") s; sacct works"

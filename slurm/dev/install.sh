#!/usr/bin/env bash
# Install the Debian packages needed for a one-node SLURM dev cluster
# (slurmctld + slurmd + slurmdbd with MariaDB accounting, munge auth).
# Idempotent: when everything is already installed it returns at once,
# without running apt-get update.
set -euo pipefail

PKGS=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)
# Commands the other scripts need; checked as well as the dpkg state.
CMDS=(slurmctld slurmd slurmdbd sbatch sacct sacctmgr sinfo squeue scontrol munged mungekey munge unmunge mariadbd mariadb mariadb-admin mariadb-install-db)

die() { echo "slurm/dev/install.sh: ERROR: $*" >&2; exit 1; }

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
for c in "${CMDS[@]}"; do
    if ! command -v "$c" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$c" ]; then
        missing+=("cmd:$c")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "slurm/dev/install.sh: already installed (${PKGS[*]})"
    exit 0
fi

echo "slurm/dev/install.sh: missing: ${missing[*]}; installing ${PKGS[*]}"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install ${PKGS[*]}"
    SUDO=(sudo -E)
fi
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian/Ubuntu only"

# Keep the packages' init scripts from starting system-wide daemons during the
# install: start.sh runs its own private instances from the state folder.
POLICY=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    added_policy=1
fi
cleanup() { if [ "$added_policy" -eq 1 ]; then "${SUDO[@]}" rm -f "$POLICY"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q || die "apt-get update failed"
"${SUDO[@]}" apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${PKGS[@]}" || die "apt-get install ${PKGS[*]} failed"

for c in "${CMDS[@]}"; do
    command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || die "command '$c' still missing after install"
done
echo "slurm/dev/install.sh: installed ${PKGS[*]}"

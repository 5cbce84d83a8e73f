#!/usr/bin/env bash
# Installs MMDetection 3.3.0, mmengine and mmcv 2.1.0 into the project's venv (`make mmdet`).
#
# PyPI ships mmcv 2.1.0 (the newest mmdet 3.3.0 accepts) only as a source distribution, and
# that source does not build against torch 2.14 as it is: its setup.py asks for -std=c++14/17
# while torch's headers need C++20, and it imports pkg_resources, which setuptools>=70 no
# longer has (torch 2.14.1 itself wants setuptools>=77). So the wheel is built once, in a
# throwaway build venv that has setuptools<70 and ninja and sees the project's torch, with
# every -std flag raised to c++20; it is cached outside the repository, keyed by the Python,
# torch and mmcv versions, and later installs take seconds. The project's own setuptools is
# never touched (`pip check` stays clean).
#
# Environment: VENV (default .venv), PSS_WHEEL_CACHE (default
# ${XDG_CACHE_HOME:-~/.cache}/pss/wheels), MAX_JOBS (compile jobs, default: all cores).
set -euo pipefail
cd "$(dirname "$0")/../.."

MMCV_VERSION=2.1.0
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "install.sh: $PY not found; run 'make setup' first" >&2; exit 1; }
VENV=$(cd "$VENV" && pwd)
PY="$VENV/bin/python"

tags=$("$PY" -c 'import sys, torch; print(f"cp{sys.version_info[0]}{sys.version_info[1]}",
torch.__version__.split("+")[0], sep="-torch")')
CACHE=${PSS_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pss/wheels}/$tags
mkdir -p "$CACHE"

build_mmcv() {
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    local started=$SECONDS
    echo "mmdet: building mmcv $MMCV_VERSION from source for $tags (about 10 min on 2 cores)"
    # Build venv: old setuptools (pkg_resources) and ninja; torch comes from the project venv
    # through a .pth line, after the build venv's own site-packages.
    "$PY" -m venv "$work/build-venv"
    local bpy="$work/build-venv/bin/python"
    "$bpy" -m pip install --quiet "setuptools<70" wheel ninja
    local site
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$site" > "$("$bpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/venv.pth"
    # (pip reads an sdist's metadata by running its setup.py: that needs the build venv too.)
    "$bpy" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
        --dest "$work" "mmcv==$MMCV_VERSION"
    tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
    local src="$work/mmcv-$MMCV_VERSION"
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/setup.py"
    if grep -qE -- '-std=c\+\+1[47]' "$src/setup.py"; then
        echo "install.sh: could not raise mmcv's -std flags to c++20" >&2; exit 1
    fi
    (cd "$src" && PATH="$work/build-venv/bin:$PATH" MMCV_WITH_OPS=1 \
        MAX_JOBS=${MAX_JOBS:-$(nproc)} "$bpy" -m pip wheel --quiet --no-build-isolation \
        --no-deps --wheel-dir "$work/dist" .)
    mv "$work"/dist/mmcv-"$MMCV_VERSION"-*.whl "$CACHE/"
    echo "mmdet: mmcv wheel built in $((SECONDS - started)) s, cached in $CACHE"
}

ls "$CACHE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1 || build_mmcv

# The pins live in pyproject.toml's `mmdet` extra (the project itself is installed by
# `make setup`); the cached wheel satisfies mmcv's.
mapfile -t extra < <("$PY" -c 'import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["mmdet"],
      sep="\n")')
"$PY" -m pip install --quiet --find-links "$CACHE" --only-binary mmcv "${extra[@]}"
"$PY" -m pip check
"$PY" -c 'import mmcv.ops, mmdet, mmengine
print("mmdet", mmdet.__version__, "mmcv", mmcv.__version__, "mmengine", mmengine.__version__)'

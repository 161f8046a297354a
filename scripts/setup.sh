#!/usr/bin/env bash
# The one install path of napari-imedsam (the README's two commands and .ci/run call it):
#   1. Debian/Ubuntu system packages: Xvfb and the X/GL libraries that Qt 6's xcb platform loads
#      (as root directly, otherwise through sudo; skipped when all are installed already),
#   2. the virtual environment .venv (Python 3.10+),
#   3. torch==2.14.1 and torchvision==0.29.1 (together: segment-anything and timm import torchvision),
#   4. the project with its test extra (napari with PyQt6, pytest, pytest-xvfb, ...),
#   5. stardist 0.9.1 without dependencies (its data files: the benchmarks' held-out nuclei image).
# Running it again is safe: every step keeps what is already there.
#
# IMEDSAM_SETUP_DRY_RUN=1 prints the commands instead of running them (tests use it).
set -euo pipefail

USAGE="usage: bash scripts/setup.sh [--setup-only | --demo [DEMO ARGS] | --test [PYTEST ARGS]] [--no-apt]
  --setup-only  install only (the default)
  --demo        then start .venv/bin/imedsam-demo (with DEMO ARGS, e.g. --sample retina)
  --test        then run the tests: .venv/bin/python -m pytest -q -ra (with PYTEST ARGS after --)
  --no-apt      skip the system packages (installed by you: not Debian/Ubuntu, or no root)"

APT_PACKAGES=(
    xvfb xauth
    libgl1 libegl1 libfontconfig1 libglib2.0-0 libdbus-1-3
    libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
    libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0
)
TORCH=(torch==2.14.1 torchvision==0.29.1)
STARDIST=stardist==0.9.1

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

dry_run() { [ "${IMEDSAM_SETUP_DRY_RUN:-0}" = 1 ]; }

run() {  # run a command, or print it in a dry run
    if dry_run; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

mode=setup
apt=1
passthrough=()
while [ $# -gt 0 ]; do
    case "$1" in
        --demo) mode=demo ;;
        --test) mode=test ;;
        --setup-only) mode=setup ;;
        --no-apt) apt=0 ;;
        -h|--help) printf '%s\n' "$USAGE"; exit 0 ;;
        --) shift; passthrough+=("$@"); break ;;
        *) if [ "$mode" = setup ]; then die "unknown option $1 (see --help)"; fi
           passthrough+=("$1") ;;
    esac
    shift
done

script_dir=${BASH_SOURCE[0]%/*}
[ "$script_dir" = "${BASH_SOURCE[0]}" ] && script_dir=.
cd "$script_dir/.."

# ---- 1. system packages -----------------------------------------------------------------------------------
missing_packages() {
    local p status
    for p in "${APT_PACKAGES[@]}" "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [ "$status" = "install ok installed" ] || printf '%s\n' "$p"
    done
}

python_packages() {  # Debian's venv module when this python3 cannot make a venv with pip
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        printf '%s\n' python3-venv
    fi
}

install_system_packages() {
    if [ "$apt" = 0 ]; then
        say "1/5 system packages: skipped (--no-apt); needed: ${APT_PACKAGES[*]}"
        return
    fi
    local missing
    mapfile -t missing < <(missing_packages $(python_packages))
    if [ ${#missing[@]} = 0 ]; then
        say "1/5 system packages: all installed"
        return
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found (not Debian/Ubuntu): install the \
equivalents of ${missing[*]} yourself, then run this again with --no-apt"
    local root=()  # as root directly; otherwise through sudo
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "installing the system packages needs root: you are not root \
and sudo is not installed. Run as root (or ask an administrator to run):
    apt-get update && apt-get install -y --no-install-recommends ${missing[*]}
then run this command again (or add --no-apt to skip this step)."
        root=(sudo)
    fi
    say "1/5 system packages: installing ${missing[*]}${root:+ (with sudo)}"
    run "${root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        || die "apt-get update failed (see above)"
    run "${root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" || die "apt-get install failed (see above)"
}

# ---- 2.-5. Python -----------------------------------------------------------------------------------------
install_python() {
    if ! dry_run; then
        command -v python3 >/dev/null 2>&1 || die "python3 not found: install Python 3.10 or newer"
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
            || die "Python 3.10 or newer is needed, python3 is $(python3 -V 2>&1)"
    fi
    if [ -x .venv/bin/python ]; then
        say "2/5 virtual environment: .venv exists"
    else
        say "2/5 virtual environment: creating .venv"
        run python3 -m venv .venv
        run .venv/bin/python -m pip install -q --upgrade pip
    fi
    say "3/5 ${TORCH[*]} (a few minutes the first time)"
    run .venv/bin/python -m pip install -q "${TORCH[@]}"
    say "4/5 napari-imedsam with its test extra (napari, PyQt6, pytest, ...)"
    run .venv/bin/python -m pip install -q -e ".[test]"
    if [ -x .venv/bin/python ] && .venv/bin/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("PyQt5") is None)' \
            2>/dev/null; then  # left by an older set-up: qtpy would pick it before PyQt6
        say "    removing PyQt5 from .venv (the extras install Qt 6 now; qtpy prefers PyQt5 when both are there)"
        run .venv/bin/python -m pip uninstall -y -q PyQt5 PyQt5-Qt5 PyQt5-sip
    fi
    say "5/5 $STARDIST data files (benchmarks)"
    run .venv/bin/python -m pip install -q --no-deps "$STARDIST"
}

install_system_packages
install_python

case "$mode" in
    demo)
        say "starting imedsam-demo"
        if dry_run; then run .venv/bin/imedsam-demo "${passthrough[@]}"; else exec .venv/bin/imedsam-demo "${passthrough[@]}"; fi ;;
    test)
        say "running the tests: .venv/bin/python -m pytest -q -ra ${passthrough[*]}"
        if dry_run; then run .venv/bin/python -m pytest -q -ra "${passthrough[@]}"
        else exec .venv/bin/python -m pytest -q -ra "${passthrough[@]}"; fi ;;
    *) say "done: .venv/bin/imedsam-demo starts the demo, .venv/bin/python -m pytest -q -ra runs the tests" ;;
esac

#!/usr/bin/env bash
# Install everything Legato needs on Debian 12, idempotently:
#   scripts/bootstrap.sh          system ffmpeg, .venv with `pip install -e .`
#   scripts/bootstrap.sh --test   + test extras, Chromium + ChromeDriver,
#                                 Node.js/npm if missing, `npm ci` in tests/browser
# apt-get runs only for what is missing (as root, or through sudo); pip and npm
# run only when setup.cfg/pyproject.toml or the npm lockfile changed (stamp
# files in .venv and tests/browser/node_modules). Environment: PYTHON picks the
# interpreter for a new .venv (default: python3.11, else python3).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
BROWSER_DIR=$ROOT/tests/browser
WITH_TEST=0
for arg in "$@"; do
    case $arg in
        --test) WITH_TEST=1 ;;
        *) echo "bootstrap: unknown argument $arg (use --test or nothing)" >&2; exit 2 ;;
    esac
done

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- system packages
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on PATH: Legato needs Python 3.11 or newer"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); Legato needs Python 3.11 or newer"

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
need() {  # need PACKAGE: queue a Debian package unless it is installed
    have_pkg "$1" || missing+=("$1")
}
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || need ffmpeg
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian's own python3 ships venv/ensurepip separately.
    need "python3-venv"
    need "python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
fi
if [ "$WITH_TEST" = 1 ]; then
    [ -x /usr/bin/chromium ] || need chromium
    [ -x /usr/bin/chromedriver ] || need chromium-driver
    [ -x /usr/sbin/haproxy ] || need haproxy  # runs config/haproxy.cfg in the director tests
    if ! command -v npm >/dev/null 2>&1; then
        command -v node >/dev/null 2>&1 || need nodejs
        need npm
    fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "need root or sudo to install: ${missing[*]}"
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
fi

# ---------------------------------------------------------------- Python venv
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "$VENV is broken or too old; recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $PYTHON ($("$PYTHON" -V 2>&1))"
    "$PYTHON" -m venv "$VENV"
fi

hash_of() { cat "$@" | sha256sum | cut -c1-16; }
py_hash=$(hash_of setup.cfg pyproject.toml)
if [ "$WITH_TEST" = 1 ]; then extras="[test]"; kind=test; else extras=""; kind=base; fi
stamp=$VENV/.legato-installed-$kind-$py_hash
test_stamp=$VENV/.legato-installed-test-$py_hash
if [ -e "$stamp" ] || [ -e "$test_stamp" ]; then
    say "Python packages up to date ($kind, $py_hash)"
else
    say "pip install -e .$extras"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q --progress-bar off -e ".$extras"
    rm -f "$VENV"/.legato-installed-*
    touch "$stamp"
fi

# ---------------------------------------------------------------- npm (browser tests)
if [ "$WITH_TEST" = 1 ]; then
    npm_hash=$(hash_of "$BROWSER_DIR/package.json" "$BROWSER_DIR/package-lock.json")
    npm_stamp=$BROWSER_DIR/node_modules/.legato-npm-$npm_hash
    if [ -e "$npm_stamp" ]; then
        say "browser test packages up to date ($npm_hash)"
    else
        say "npm ci in tests/browser (lockfile $npm_hash)"
        (cd "$BROWSER_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
        touch "$npm_stamp"
    fi
fi
say "ready"

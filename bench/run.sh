#!/usr/bin/env bash
# make bench: what an unarmed failpoint costs (bench/failpoint_bench.py), then the
# staging benchmark (bench/stage_bench.py) against nginx on loopback.
# Installs nginx and curl from Debian when they are missing and we are root;
# extra arguments go to stage_bench.py (e.g. --runs 7, --no-big, --profile).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
        exit 1
    fi
    echo "bench: installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=.venv/bin/python
[ -x "$PY" ] || { echo "bench: no virtualenv at .venv (run make bench)" >&2; exit 1; }
"$PY" bench/failpoint_bench.py
exec "$PY" bench/stage_bench.py "$@"

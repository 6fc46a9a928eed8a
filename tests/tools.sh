#!/usr/bin/env bash
# The system tools the test suite runs for real, as listed in tests/tools.list.
# `make test` calls this so a fresh machine gets them; it installs only what is
# missing, and needs root (apt-get) for that. A tool listed for one make target
# (a third column) is installed only when that target is named:
# `tests/tools.sh container-test-podman`.
set -eu
list="$(dirname "$0")/tools.list"
missing=()
while read -r tool package target; do
  case "$tool" in ''|'#'*) continue ;; esac
  if [ -n "$target" ]; then
    case " $* " in *" $target "*) ;; *) continue ;; esac
  fi
  if [ "${tool#/}" != "$tool" ]; then [ -e "$tool" ] && continue
  else command -v "$tool" >/dev/null 2>&1 && continue; fi
  case " ${missing[*]-} " in *" $package "*) ;; *) missing+=("$package") ;; esac
done < "$list"
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "tests need: ${missing[*]} (install with: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi

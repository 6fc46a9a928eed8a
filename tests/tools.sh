#!/usr/bin/env bash
# The system tools the test suite runs for real. `make test` calls this so a
# fresh machine gets them; it installs only what is missing and needs root.
set -eu
missing=()
command -v grub-editenv >/dev/null 2>&1 || missing+=(grub-common)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "tests need: ${missing[*]} (install with: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi

#!/bin/sh
# Debian packages rotnet uses beyond Python's, installed with apt-get (never a download of its own):
#   libjpeg-turbo-progs        jpegtran, for `rotnet-correct --lossless transpose` (tools/lossless.py)
#   chromium, chromium-driver  `test` only: the headless browser that drives rotnet-serve's page
#                              (tests/test_serve_browser.py, through selenium)
#   sh scripts/install-system.sh          # runtime packages
#   sh scripts/install-system.sh test     # and the test packages (.ci/run does this)
# Packages already installed are left alone; nothing is asked (DEBIAN_FRONTEND=noninteractive).
set -eu
packages="libjpeg-turbo-progs"
if [ "${1:-}" = test ]; then
  packages="$packages chromium chromium-driver"
fi
missing=""
for package in $packages; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $package"
  fi
done
if [ -z "$missing" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: apt-get not found; install$missing with this system's package manager" >&2
  exit 2
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
fi
echo "installing Debian packages:$missing" >&2
$SUDO apt-get update -qq
# shellcheck disable=SC2086  # the package list is split on purpose
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing

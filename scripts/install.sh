#!/bin/sh
# The one install recipe, shared by the Makefile and the Dockerfile so both get the same packages.
#   EXTRAS   extras of setup.cfg to install (default: pipeline,trainer)
#   PIP      pip command (default: python3 -m pip)
#   EDITABLE 1 for an editable (development) install
set -eu
cd "$(dirname "$0")/.."
PIP=${PIP:-python3 -m pip}
EXTRAS=${EXTRAS:-pipeline,trainer}
$PIP install --quiet --upgrade pip
if [ "${EDITABLE:-0}" = 1 ]; then
  $PIP install --quiet -c constraints.txt -e ".[$EXTRAS]"
else
  $PIP install --quiet --no-cache-dir -c constraints.txt ".[$EXTRAS]"
fi

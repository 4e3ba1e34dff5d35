#!/usr/bin/env bash
# Installs the Debian packages that `make test` or `make demo` need, when they are missing.
#
#   scripts/system-packages.sh test   PostgreSQL, dcmtk, Mosquitto, Redis, Orthanc, Chromium, OpenSSL: the real
#                                     servers and clients the test suite starts on loopback (nothing is enabled
#                                     as a system service by covidet; Debian may start its own)
#   scripts/system-packages.sh demo   Mosquitto (the demo's private MQTT broker) and dcmtk (a real DICOM sender)
#   (both: Node.js and npm when no npm is on the PATH, to build the diagnostic viewer's JavaScript)
#
# As root it runs apt-get itself; otherwise through sudo (asking for a password only on a terminal).
# Where neither is possible, or on a system without apt-get, it stops with the command to run by hand.
set -euo pipefail

case "${1:-}" in
  test) wanted=(postgresql dcmtk dicom3tools mosquitto mosquitto-clients redis-server orthanc orthanc-dicomweb chromium openssl) ;;
  demo) wanted=(mosquitto mosquitto-clients dcmtk) ;;
  *) echo "usage: $0 test|demo" >&2; exit 2 ;;
esac
# The diagnostic viewer's JavaScript is built with npm (make viewer). Debian's nodejs/npm only where no
# Node.js is on the PATH: a NodeSource or nvm installation is used as it is (Debian's npm conflicts with it).
if ! command -v npm >/dev/null 2>&1; then
  wanted+=(nodejs npm)
fi

missing=()
for package in "${wanted[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

by_hand="apt-get install --no-install-recommends ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "covidet: 'make $1' needs these Debian packages, and this system has no apt-get: ${missing[*]}" >&2
  echo "         install their equivalents, then run 'make $1' again" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  as_root=(env)
elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
  as_root=(sudo env)
else
  echo "covidet: 'make $1' needs these Debian packages: ${missing[*]}" >&2
  echo "         it cannot install them (not root, no usable sudo): run 'sudo $by_hand', then 'make $1' again" >&2
  exit 1
fi
echo "covidet: installing the Debian packages that 'make $1' needs: ${missing[*]} (apt-get, once)" >&2
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "covidet: installed ${missing[*]}" >&2

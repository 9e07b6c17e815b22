#!/usr/bin/env bash
# Installs the system programs the tests and benchmarks use as real peers:
# DCMTK (storescu, echoscu, storescp) and Orthanc with its DICOMweb plugin;
# for the viewer tests (tests/viewer/), Chromium (driven headless by
# Playwright) and npm (scripts/fetch-ohif.sh fetches the OHIF viewer with it).
# Does nothing when they are already there; needs root (or sudo) otherwise.
set -euo pipefail

need=()
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v npm >/dev/null 2>&1 || need+=(npm)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "missing system packages: ${need[*]} (install them as root)" >&2
        exit 1
    fi
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Orthanc's package starts a system service; the tests start their own instances.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true; fi

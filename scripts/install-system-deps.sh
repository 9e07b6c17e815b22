#!/usr/bin/env bash
# Installs the system programs the tests and benchmarks use as real peers:
# DCMTK (storescu, echoscu, storescp) and Orthanc with its DICOMweb plugin;
# for the viewer tests (tests/viewer/), Chromium (driven headless by
# Playwright) and npm (scripts/fetch-ohif.sh fetches the OHIF viewer with it);
# for the storage tests, PostgreSQL answering on 127.0.0.1:5432.
#
# PostgreSQL: a server that already answers on 127.0.0.1:5432 is left alone,
# whatever it is. Otherwise the Debian package `postgresql` is installed when
# missing, and a cluster on port 5432 (the package's `main`, or a new one) is
# set up the way tests/storage/conftest.py connects to it: listening on
# localhost, `trust` authentication for TCP from 127.0.0.1 and ::1 (user
# `postgres`, no password), with a `test` database, and started.
# DICOM_NODE_PG_PORT (default 5432) names another port, to try this script.
#
# Does nothing when everything is already there; needs root (or sudo) otherwise.
set -euo pipefail

PG_PORT="${DICOM_NODE_PG_PORT:-5432}"

pg_answers() {
    timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PG_PORT" 2>/dev/null
}

need=()
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v npm >/dev/null 2>&1 || need+=(npm)
# redis-server: the Celery tests start a broker of their own to kill and restart it.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)

pg_setup=0
if pg_answers; then
    :  # a PostgreSQL (or something) already answers: not ours to touch
else
    pg_setup=1
    if ! command -v pg_createcluster >/dev/null 2>&1 \
        || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
        need+=(postgresql)
    fi
fi

if [ ${#need[@]} -eq 0 ] && [ "$pg_setup" -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        missing="${need[*]}"
        [ "$pg_setup" -eq 1 ] && missing="$missing (and a PostgreSQL on 127.0.0.1:$PG_PORT)"
        echo "missing system packages: $missing (install them as root)" >&2
        exit 1
    fi
fi

pg_installed_now=0
if [ ${#need[@]} -gt 0 ]; then
    echo "installing system packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Orthanc's package starts a system service; the tests start their own instances.
    if command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
    fi
    for p in "${need[@]}"; do
        if [ "$p" = postgresql ]; then pg_installed_now=1; fi
    done
fi

[ "$pg_setup" -eq 1 ] || exit 0

# -- PostgreSQL on 127.0.0.1:$PG_PORT -------------------------------------------------
# The cluster configured for the port (the package's `main` usually), else a new one.
ver="" name="" state=""
read -r ver name state < <(
    pg_lsclusters --no-header 2>/dev/null | awk -v p="$PG_PORT" '$3 == p {print $1, $2, $4; exit}'
) || true
if [ -z "$ver" ]; then
    ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    name=main
    [ -e "/etc/postgresql/$ver/main" ] && name=dicom-node-test
    echo "creating PostgreSQL $ver cluster $name on port $PG_PORT"
    $SUDO pg_createcluster "$ver" "$name" --port "$PG_PORT" >/dev/null
    state=down
elif [ "$state" = online ] && [ "$pg_installed_now" -eq 0 ]; then
    # Running, but not answering on 127.0.0.1: someone's server, configured otherwise.
    echo "PostgreSQL $ver/$name runs on port $PG_PORT but does not answer on" \
        "127.0.0.1:$PG_PORT; the tests need TCP on localhost with trust for user postgres" \
        "(tests/storage/conftest.py, or set DICOM_NODE_TEST_POSTGRES_URL)" >&2
    exit 1
fi

conf="/etc/postgresql/$ver/$name"
if ! $SUDO grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' \
    "$conf/pg_hba.conf"; then
    # First matching line wins: put the trust lines before the package's scram-sha-256 ones.
    $SUDO sed -i '1i\
# dicom-node tests (scripts/install-system-deps.sh): no password over local TCP\
host    all             all             127.0.0.1/32            trust\
host    all             all             ::1/128                 trust' "$conf/pg_hba.conf"
fi
listen=$($SUDO pg_conftool -s "$ver" "$name" show listen_addresses 2>/dev/null || echo localhost)
case "$listen" in
    *localhost* | *127.0.0.1* | *\** | *0.0.0.0*) ;;
    *) $SUDO pg_conftool "$ver" "$name" set listen_addresses localhost ;;
esac

if [ "$state" = online ]; then
    $SUDO pg_ctlcluster "$ver" "$name" restart  # the package started it before the changes
else
    $SUDO pg_ctlcluster "$ver" "$name" start
fi
for _ in $(seq 60); do
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.5
done
if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    echo "PostgreSQL $ver/$name did not come up on 127.0.0.1:$PG_PORT" \
        "(log: /var/log/postgresql/postgresql-$ver-$name.log)" >&2
    exit 1
fi
psql_admin=(psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tA)
if [ -z "$("${psql_admin[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'test'")" ]; then
    "${psql_admin[@]}" -c 'CREATE DATABASE test'
fi
echo "PostgreSQL $ver cluster $name: 127.0.0.1:$PG_PORT, trust for local TCP, database test"

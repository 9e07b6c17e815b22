#!/usr/bin/env bash
# Fetches the prebuilt OHIF viewer v3 (npm package @ohif/app, its dist/ folder)
# into .cache/ohif/<version>/ for the viewer tests (tests/viewer/).  Does
# nothing when that version is already there.  Needs npm (Debian: nodejs/npm)
# and the npm registry; the tarball's SHA-1 is checked against the pinned one.
set -euo pipefail

VERSION="${OHIF_VERSION:-3.12.0}"
SHASUM="${OHIF_SHASUM:-37e50ed66d0dfd1bb739bacce70b3f25170d1084}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/.cache/ohif/$VERSION"

if [ -f "$DEST/dist/index.html" ] && [ -f "$DEST/.complete" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "npm is needed to fetch the OHIF viewer (@ohif/app@$VERSION); install nodejs/npm" >&2
    exit 1
fi

echo "fetching the OHIF viewer @ohif/app@$VERSION into ${DEST#"$ROOT"/}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@ohif/app@$VERSION" >/dev/null)
tarball="$tmp/ohif-app-$VERSION.tgz"
got="$(sha1sum "$tarball" | cut -d' ' -f1)"
if [ "$got" != "$SHASUM" ]; then
    echo "@ohif/app@$VERSION: SHA-1 $got, expected $SHASUM" >&2
    exit 1
fi
mkdir -p "$tmp/unpacked"
tar -xzf "$tarball" -C "$tmp/unpacked" package/dist package/LICENSE package/package.json
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$tmp/unpacked/package" "$DEST"
touch "$DEST/.complete"

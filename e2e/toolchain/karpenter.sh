#!/usr/bin/env bash
# Builds Karpenter's kwok cloud provider (the main package sigs.k8s.io/karpenter/kwok) from the Go
# module proxy, and copies the CRDs it needs from the same module source: NodePool and NodeClaim
# (the kwok chart's copies, which allow the karpenter.kwok.sh label keys), NodeOverlay and
# CapacityBuffer (Karpenter's informers watch them even with their feature gates off) and the
# provider's KWOKNodeClass.
#
# Its own cache folder and .complete marker, apart from build.sh's: karpenter's go.mod needs a newer
# Go (>= 1.26.9) than the control plane is built with, so it is built with GOTOOLCHAIN (the proxy
# serves the toolchain), and the control plane's cache key does not change.
# Idempotent: a complete cache is reused as is. Prints the cache folder.
set -euo pipefail

KARPENTER_VERSION=${KARPENTER_VERSION:-v1.15.0}
KARPENTER_GO=${KARPENTER_GO:-go1.27.3}
CACHE_ROOT=${NOTEBOOKOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/notebookos}
DEST=${NOTEBOOKOS_KARPENTER_BIN:-$CACHE_ROOT/karpenter-$KARPENTER_VERSION-$KARPENTER_GO}

if [[ -f $DEST/.complete ]]; then
  echo "$DEST"
  exit 0
fi
log() { echo "[toolchain/karpenter] $*" >&2; }
mkdir -p "$DEST/bin" "$DEST/crds"
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOTOOLCHAIN=$KARPENTER_GO

# karpenter's go.mod has no replace directives, so `go install pkg@version` builds it as released.
log "go install sigs.k8s.io/karpenter/kwok@$KARPENTER_VERSION with $KARPENTER_GO (downloads the toolchain and modules on a cold cache)"
(cd "$work" && CGO_ENABLED=0 GOBIN="$work/bin" go install -trimpath -p 2 \
  -ldflags "-s -w -X sigs.k8s.io/karpenter/pkg/operator.Version=$KARPENTER_VERSION" \
  "sigs.k8s.io/karpenter/kwok@$KARPENTER_VERSION") >&2
# The binary is named after its package (kwok); renamed so it cannot be taken for the kwok node simulator.
install -m 0755 "$work/bin/kwok" "$DEST/bin/karpenter-kwok"

src=$(cd "$work" && go mod download -json "sigs.k8s.io/karpenter@$KARPENTER_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
install -m 0644 "$src"/kwok/charts/crds/*.yaml "$src"/kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml "$DEST/crds/"

log "built in $(( $(date +%s) - start ))s; cache size $(du -sh "$DEST" | cut -f1)"
touch "$DEST/.complete"
echo "$DEST"

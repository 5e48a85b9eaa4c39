#!/usr/bin/env bash
# actionlint (GitHub Actions workflow linter) from the Go module proxy, cached like the test bed's
# binaries. Prints the binary's path. The workflows cannot run here; `make lint` lints them.
set -euo pipefail
VERSION=${ACTIONLINT_VERSION:-v1.7.12}
CACHE_ROOT=${NOTEBOOKOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/notebookos}
DEST=$CACHE_ROOT/actionlint-$VERSION
if [[ ! -x $DEST/actionlint ]]; then
  echo "[tools/actionlint] go install actionlint@$VERSION" >&2
  CGO_ENABLED=0 GOBIN="$DEST" go install -trimpath "github.com/rhysd/actionlint/cmd/actionlint@$VERSION" >&2
fi
echo "$DEST/actionlint"

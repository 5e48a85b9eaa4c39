#!/usr/bin/env bash
# The one place image names and tags come from: the chart's Chart.yaml (appVersion and the
# notebookos.io/image-registry annotation), which the chart's templates read as well.
#   images/names.sh control   ->  ghcr.io/notebookos/control:0.1.0
set -euo pipefail
CHART=$(dirname "$0")/../charts/notebookos/Chart.yaml
field() { sed -nE "s/^ *$1: *\"?([^\"]*)\"?$/\1/p" "$CHART" | head -1; }
echo "$(field 'notebookos.io\/image-registry')/$1:$(field appVersion)"

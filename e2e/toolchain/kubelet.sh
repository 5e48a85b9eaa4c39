#!/usr/bin/env bash
# The real-node tier's kubelet and kube-proxy, built from the Go module proxy like the control plane
# (e2e/toolchain/build.sh: a wrapper module requiring k8s.io/kubernetes with every staging module
# replaced), into its own cache folder so the control plane's cache is never touched.
# containerd, runc and the CNI plugins come from Debian's packages (apt-get install when missing).
# Prints the folder (bin/kubelet, bin/kube-proxy). Idempotent: a folder with .complete is reused as is.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
GO_VERSION=$(go env GOVERSION)
CACHE_ROOT=${NOTEBOOKOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/notebookos}
DEST=${NOTEBOOKOS_KUBELET_BIN:-$CACHE_ROOT/kubelet-$K8S_VERSION-$GO_VERSION}
log() { echo "[toolchain/kubelet] $*" >&2; }

missing=()
for pkg in containerd runc containernetworking-plugins; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if [[ -f $DEST/.complete && -x $DEST/bin/kube-proxy ]]; then
  echo "$DEST"
  exit 0
fi
mkdir -p "$DEST/bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
staging_version=v0.${K8S_VERSION#v1.}
kk_mod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
mkdir -p "$work/mod/cmd/kubelet" "$work/mod/cmd/kube-proxy"
cd "$work/mod"
go mod init notebookos.invalid/kubelet >/dev/null 2>&1
go mod edit -go="$(awk '$1=="go"{print $2; exit}' "$kk_mod")"
for m in $(sed -nE 's#^[[:space:]]*(k8s\.io/[^[:space:]]+) => \./staging/.*#\1#p' "$kk_mod"); do
  go mod edit -replace "$m=$m@$staging_version"
done
go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
cat >cmd/kubelet/main.go <<'GO'
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() { os.Exit(cli.Run(app.NewKubeletCommand(context.Background()))) }
GO
cat >cmd/kube-proxy/main.go <<'GO'
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() { os.Exit(cli.Run(app.NewProxyCommand())) }
GO
log "go mod tidy"
GOFLAGS=-mod=mod go mod tidy >&2
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
log "go build kubelet kube-proxy"
CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -p 1 -ldflags "$ldflags" -o "$DEST/bin/" ./cmd/... >&2
touch "$DEST/.complete"
echo "$DEST"

#!/usr/bin/env bash
# Builds the real control plane for the e2e tier into a cache outside the repository:
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from the Go module proxy
# (a wrapper module that requires k8s.io/kubernetes and replaces every staging module), kwok,
# and etcd unpacked from Debian's packages into a private folder (nothing installed system-wide).
# Idempotent: a complete cache (marked by .complete) is reused as is.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.21.4}
ETCD_SUITE=${ETCD_SUITE:-sid}
GO_VERSION=$(go env GOVERSION)
CACHE_ROOT=${NOTEBOOKOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/notebookos}
DEST=${NOTEBOOKOS_K8S_BIN:-$CACHE_ROOT/k8s-$K8S_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION-etcd-$ETCD_SUITE-$GO_VERSION}

if [[ -f $DEST/.complete ]]; then
  echo "$DEST"
  exit 0
fi
log() { echo "[toolchain] $*" >&2; }
mkdir -p "$DEST/bin"
start=$(date +%s)

# --- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl ---------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
staging_version=v0.${K8S_VERSION#v1.}
log "resolving k8s.io/kubernetes@$K8S_VERSION"
kk_mod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
mkdir -p "$work/mod"
cd "$work/mod"
go mod init notebookos.invalid/k8sbins >/dev/null 2>&1
go mod edit -go="$(awk '$1=="go"{print $2; exit}' "$kk_mod")"
# The replace list comes from k/k's own go.mod on the proxy, not from a hand-kept list.
for m in $(sed -nE 's#^[[:space:]]*(k8s\.io/[^[:space:]]+) => \./staging/.*#\1#p' "$kk_mod"); do
  go mod edit -replace "$m=$m@$staging_version"
done
go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
for c in kube-apiserver:k8s.io/kubernetes/cmd/kube-apiserver/app.NewAPIServerCommand \
         kube-scheduler:k8s.io/kubernetes/cmd/kube-scheduler/app.NewSchedulerCommand \
         kube-controller-manager:k8s.io/kubernetes/cmd/kube-controller-manager/app.NewControllerManagerCommand; do
  name=${c%%:*}; fn=${c#*:}; pkg=${fn%.*}; ctor=${fn##*.}
  mkdir -p "cmd/$name"
  cat >"cmd/$name/main.go" <<GO
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	app "$pkg"
)

func main() { os.Exit(cli.Run(app.$ctor())) }
GO
done
mkdir -p cmd/kubectl
cat >cmd/kubectl/main.go <<'GO'
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
GO
log "go mod tidy (downloads modules on a cold cache)"
GOFLAGS=-mod=mod go mod tidy >&2
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
log "go build of kube-apiserver, kube-controller-manager, kube-scheduler, kubectl"
CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -p 2 -ldflags "$ldflags" -o "$DEST/bin/" ./cmd/... >&2

# --- kwok and its stage definitions ---------------------------------------------------------------
log "go install kwok@$KWOK_VERSION"
(cd "$work" && CGO_ENABLED=0 GOBIN="$DEST/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION") >&2
kwok_dir=$(cd "$work" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
mkdir -p "$DEST/kwok-stages"
for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
             pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
  install -m 0644 "$kwok_dir/kustomize/stage/$stage.yaml" "$DEST/kwok-stages/"
done

# --- helm, to lint and render the chart ------------------------------------------------------------
log "go install helm@$HELM_VERSION"
(cd "$work" && CGO_ENABLED=0 GOBIN="$DEST/bin" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") >&2

# --- etcd from Debian, unpacked privately ----------------------------------------------------------
log "etcd from Debian $ETCD_SUITE"
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/debs"
cat >"$apt_dir/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $ETCD_SUITE main
SRC
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives" -o "Debug::NoLocking=1")
apt-get "${apt_opts[@]}" update -qq >&2
(cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download etcd-server etcd-client >&2)
for deb in "$apt_dir/debs"/*.deb; do dpkg-deb -x "$deb" "$apt_dir/root"; done
cp "$apt_dir/root/usr/bin/etcd" "$DEST/bin/etcd"
cp "$apt_dir/root/usr/bin/etcdctl" "$DEST/bin/etcdctl" 2>/dev/null || true

"$DEST/bin/kube-apiserver" --version >&2
"$DEST/bin/etcd" --version >&2 | head -1
log "built in $(( $(date +%s) - start ))s; cache size $(du -sh "$DEST" | cut -f1)"
touch "$DEST/.complete"
echo "$DEST"

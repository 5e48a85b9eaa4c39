#!/usr/bin/env bash
# The OCI tools `make images` needs, from Debian's packages when missing: buildah builds, podman
# runs the smoke tests' containers (with runc: crun refuses cgroup v1 hosts such as CI's),
# mmdebstrap makes the base (images/base.sh). Idempotent.
set -euo pipefail
log() { echo "[images/tools] $*" >&2; }

missing=()
for tool in buildah podman mmdebstrap runc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
# mmdebstrap checks bookworm's signatures with Debian's keyring (not on Ubuntu runners by default).
[[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

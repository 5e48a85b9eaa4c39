#!/usr/bin/env bash
# What the JupyterHub e2e test needs beside the Python packages (pyproject.toml's dev extra:
# jupyterhub, jupyterhub-kubespawner, jupyterlab, selenium):
# - configurable-http-proxy, JupyterHub's proxy, from npm into its own cache folder;
# - headless Chromium and its driver from Debian's packages, installed when missing (Playwright's
#   and Selenium Manager's browser downloads are not reachable on CI; Debian's archive is).
# Idempotent: a complete cache is reused as is. Prints the cache folder (bin/configurable-http-proxy).
set -euo pipefail

CHP_VERSION=${CHP_VERSION:-5.3.0}
CACHE_ROOT=${NOTEBOOKOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/notebookos}
DEST=${NOTEBOOKOS_HUB_BIN:-$CACHE_ROOT/chp-$CHP_VERSION}
log() { echo "[toolchain/hub] $*" >&2; }

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  log "apt-get install chromium chromium-driver"
  sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
fi

if [[ ! -f $DEST/.complete ]]; then
  log "npm install configurable-http-proxy@$CHP_VERSION into $DEST"
  mkdir -p "$DEST"
  npm install --silent --no-audit --no-fund --prefix "$DEST" "configurable-http-proxy@$CHP_VERSION" >&2
  mkdir -p "$DEST/bin"
  ln -sf ../node_modules/.bin/configurable-http-proxy "$DEST/bin/configurable-http-proxy"
  touch "$DEST/.complete"
fi
echo "$DEST"

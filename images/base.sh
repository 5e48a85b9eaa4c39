#!/usr/bin/env bash
# The images' base, made here from Debian's packages with mmdebstrap (no registry is reachable on
# CI, and this pins the base to a Debian suite and mirror instead of a tag someone else moves).
# Debian 12 "bookworm": its python3 is 3.11, the version pyproject.toml's requires-python
# (>=3.11), ruff's and mypy's target (py311) and CI's interpreter name; trixie's 3.13 is untested.
#
# A minimal Debian (minbase) with python3 and CA certificates, no apt lists, docs or man pages;
# no recommended packages; /usr merged by mmdebstrap's merged-usr hook, not the usrmerge package
# (which brings in the whole of perl, about 50 MB); the standard library keeps its compiled .pyc
# files (the root filesystem is read-only at run time).
# The unprivileged user the images run as (uid/gid 1000, home /tmp: the only writable mount) is
# written here, so the images' runtime stages need no RUN step.
# Both the build stage and the runtime stage of images/*.Containerfile start from it, so the
# virtual environment built in one runs with the same interpreter in the other.
# Idempotent: the tarball is cached under ~/.cache/notebookos/images, keyed by suite, mirror, arch
# and this script's contents. Prints the tarball's path.
set -euo pipefail

SUITE=${NOTEBOOKOS_DEBIAN_SUITE:-bookworm}
MIRROR=${NOTEBOOKOS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ARCH=${NOTEBOOKOS_DEBIAN_ARCH:-$(dpkg --print-architecture)}
CACHE_ROOT=${NOTEBOOKOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/notebookos}
KEY=$(printf '%s\n' "$SUITE" "$MIRROR" "$ARCH" | cat - "$0" | sha256sum | cut -c1-12)
OUT=$CACHE_ROOT/images/base-$SUITE-$ARCH-$KEY.tar
log() { echo "[images/base] $*" >&2; }

if [[ ! -f $OUT ]]; then
  log "mmdebstrap $SUITE ($ARCH) from $MIRROR into $OUT"
  mkdir -p "$(dirname "$OUT")"
  # Reproducible file times; docs, man pages and locales are left out by dpkg itself. The hooks'
  # "$1" (the new root) is mmdebstrap's to expand, hence the single quotes.
  # shellcheck disable=SC2016
  SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date -d 2025-01-01 +%s)} mmdebstrap \
    --variant=minbase --arch="$ARCH" --mode=root --format=tar \
    --include=python3,ca-certificates --aptopt='APT::Install-Recommends "false"' \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
    --customize-hook='echo "notebookos:x:1000:1000:NotebookOS:/tmp:/usr/sbin/nologin" >> "$1"/etc/passwd' \
    --customize-hook='echo "notebookos:x:1000:" >> "$1"/etc/group' \
    "$SUITE" "$OUT.part" "$MIRROR" >&2
  mv "$OUT.part" "$OUT"
  # Bases of earlier versions of this script or other mirrors: not used again.
  find "$(dirname "$OUT")" -maxdepth 1 -name "base-$SUITE-$ARCH-*.tar" ! -name "$(basename "$OUT")" -delete
fi
echo "$OUT"

#!/usr/bin/env bash
# `make images`: the control and kernel images, built with the OCI builder this machine has
# (docker buildx with a running engine, else podman, else buildah; NOTEBOOKOS_BUILDER picks one),
# on a base made here from Debian's packages (images/base.sh). Names and tags: images/names.sh.
#
# The builds need no network: the wheels (this project's and its dependencies') are built here
# with the project's Python (same minor version as the base's), cached by pyproject.toml's hash,
# and are the build context's only contents. Layers are cached by the builder, so a second build
# with unchanged dependencies reinstalls only the project's wheel.
#   TORCH=torch==2.5.1 [TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124] make images
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
CACHE_ROOT=${NOTEBOOKOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/notebookos}
TORCH=${TORCH:-}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
# Reproducible wheels: an unchanged project yields the same bytes, so the builder's cache holds.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}
log() { echo "[images] $*" >&2; }

bash images/tools.sh
builder=${NOTEBOOKOS_BUILDER:-}
if [[ -z $builder ]]; then
  if command -v docker >/dev/null && docker buildx version >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    builder=docker
  elif command -v podman >/dev/null; then
    builder=podman
  else
    builder=buildah
  fi
fi
# No OCI runtime is needed for RUN steps: chroot isolation works in containers and on cgroup v1.
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
log "builder: $builder"

# --- base ------------------------------------------------------------------------------------------
py_minor=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ $py_minor == 3.11 ]] || { log "wheels must be built with Python 3.11 (bookworm's), not $py_minor"; exit 1; }
tarball=$(bash images/base.sh)
base=localhost/notebookos/base:$(basename "$tarball" .tar | sed 's/^base-//')
has_image() {
  case $builder in
    docker) docker image inspect "$1" >/dev/null 2>&1 ;;
    *) "$builder" image exists "$1" 2>/dev/null || [[ -n $("$builder" images -q "$1" 2>/dev/null) ]] ;;
  esac
}
if ! has_image "$base"; then
  log "importing $tarball as $base"
  case $builder in
    docker) docker import "$tarball" "$base" >/dev/null ;;
    podman) podman import "$tarball" "$base" >/dev/null ;;
    buildah)
      ctr=$(buildah from scratch)
      buildah add --quiet "$ctr" "$tarball" / >/dev/null
      buildah commit --quiet --rm "$ctr" "$base" >/dev/null ;;
  esac
fi
# Bases of earlier versions of base.sh: the builder's layer cache keeps them alive otherwise.
if [[ $builder != docker ]]; then
  name_format='{{.Repository}}:{{.Tag}}'
  [[ $builder == podman ]] || name_format='{{.Name}}:{{.Tag}}'
  "$builder" images --format "$name_format" | grep '^localhost/notebookos/base:' | grep -vxF "$base" \
    | xargs -r "$builder" rmi >/dev/null 2>&1 || true
fi

# --- wheels ----------------------------------------------------------------------------------------
# context/<image>/{pip,deps,project}: pip's own wheel (run from the wheel, never installed), the
# dependencies (one layer, cached) and the project (rebuilt every time, a small layer).
wheels() {  # image, requirements...
  # Keyed by pyproject.toml and the requirements: TORCH changes the kernel's wheels only.
  local image=$1 key dir
  shift
  key=$(cat pyproject.toml <(echo "$@") | sha256sum | cut -c1-12)
  dir=$CACHE_ROOT/images/wheels-$image-$key
  if [[ ! -f $dir/.complete ]]; then
    log "building the $image image's dependency wheels into $dir"
    rm -rf "$dir" && mkdir -p "$dir/pip" "$dir/deps"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$dir/pip" pip >&2
    "$PY" -m pip wheel -q -w "$dir/deps" "$@" >&2
    rm -f "$dir"/deps/notebookos-*.whl
    touch "$dir/.complete"
    # Wheels for an earlier pyproject.toml: not used again.
    find "$CACHE_ROOT/images" -maxdepth 1 -name "wheels-$image-*" ! -name "wheels-$image-$key" -exec rm -rf {} +
  fi
  local ctx=$CACHE_ROOT/images/context/$image
  rm -rf "$ctx" && mkdir -p "$ctx/project"
  cp -al "$dir/pip" "$dir/deps" "$ctx/"
  cp "$project_wheel" "$ctx/project/"
  echo "$ctx"
}
project_dir=$(mktemp -d)
trap 'rm -rf "$project_dir"' EXIT
"$PY" -m pip wheel -q --no-deps -w "$project_dir" . >&2
project_wheel=$(echo "$project_dir"/notebookos-*.whl)

torch_args=()
if [[ -n $TORCH ]]; then
  torch_args=("$TORCH")
  [[ -z $TORCH_INDEX_URL ]] || torch_args+=(--extra-index-url "$TORCH_INDEX_URL")
fi

# --- build -----------------------------------------------------------------------------------------
build() {  # image, context, build args...
  local image=$1 ctx=$2 ref
  shift 2
  ref=$(bash images/names.sh "$image")
  log "building $ref"
  local args=(-f "images/$image.Containerfile" -t "$ref" --build-arg "BASE=$base"
    --build-arg "VERSION=${ref##*:}" "$@" "$ctx")
  local start=$SECONDS
  case $builder in
    docker) docker buildx build --load "${args[@]}" >&2 ;;
    podman) podman build --layers "${args[@]}" >&2 ;;
    buildah) buildah build --layers "${args[@]}" >&2 ;;
  esac
  log "built $ref in $((SECONDS - start)) s"
}
build control "$(wheels control '.[control]')"
build kernel "$(wheels kernel '.[kernel]' numpy pandas "${torch_args[@]}")"

for image in control kernel; do
  ref=$(bash images/names.sh "$image")
  case $builder in
    docker) size=$(docker image ls --format '{{.Size}}' "$ref") ;;
    *) size=$("$builder" images --format '{{.Size}}' "$ref" | head -1) ;;
  esac
  log "$ref: $size"
done

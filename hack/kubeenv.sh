#!/usr/bin/env bash
# A real Kubernetes API server on 127.0.0.1 for the operator tests: etcd (Debian etcd-server) and
# kube-apiserver built from Debian's `kubernetes` source package (upstream v1.20.2).
#
#   hack/kubeenv.sh install   apt packages, then build kube-apiserver once (cached, ~10 min cold)
#   hack/kubeenv.sh up        install, then start etcd + kube-apiserver if not running; prints the env file
#   hack/kubeenv.sh env       print the environment the tests read
#   hack/kubeenv.sh down      stop them
#
# The binary is cached in ~/.cache/mpu-sweeper/kube-apiserver-v1.20.2; state lives in
# $MPU_KUBEBED_DIR (default /tmp/mpu-sweeper-kubebed). Authentication: a static token for an admin
# in system:masters; authorization: RBAC; service-account tokens from TokenRequest
# (`kubectl create token SA`) are signed with a key generated here.
set -euo pipefail

CACHE_DIR=${MPU_CACHE_DIR:-$HOME/.cache/mpu-sweeper}
BED_DIR=${MPU_KUBEBED_DIR:-/tmp/mpu-sweeper-kubebed}
K8S_VERSION=1.20.2
APISERVER=$CACHE_DIR/kube-apiserver-v$K8S_VERSION
ETCD_PORT=12379
ETCD_PEER_PORT=12380
API_PORT=16443
ENV_FILE=$BED_DIR/env
ADMIN_TOKEN_FILE=$BED_DIR/admin.token

LOG_TAG=kubeenv
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"

enable_deb_src() {
  # Source packages come from the same Debian mirror the machine already uses for binaries.
  grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      >/etc/apt/sources.list.d/mpu-sweeper-deb-src.sources
  elif [ -f /etc/apt/sources.list ]; then
    grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >/etc/apt/sources.list.d/mpu-sweeper-deb-src.list
  else
    die "no apt sources found to derive a deb-src entry from"
  fi
  apt-get update -qq
}

install_apt() {
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v go >/dev/null || missing+=(golang-go)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || missing+=(golang-github-modern-go-reflect2-dev)
  command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
  command -v rsync >/dev/null || missing+=(rsync)
  command -v openssl >/dev/null || missing+=(openssl)

  apt_install "${missing[@]}"
}

build_apiserver() {
  [ -x "$APISERVER" ] && return 0
  enable_deb_src
  local work=$CACHE_DIR/build-kubernetes
  rm -rf "$work"
  mkdir -p "$work"
  log "fetching Debian's kubernetes source package"
  (cd "$work" && apt-get source -qq kubernetes >/dev/null 2>&1) || die "apt-get source kubernetes failed"
  local tree
  tree=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
  [ -n "$tree" ] || die "no kubernetes source tree under $work"
  grep -q "v$K8S_VERSION\|$K8S_VERSION" "$tree/debian/changelog" || log "warning: source is not v$K8S_VERSION"
  # Go >= 1.18 crashes the v1.20 apiserver on the first custom-resource write with the vendored
  # reflect2; Debian's v1.0.2 copy fixes it.
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
  local gopath=$work/gopath
  mkdir -p "$gopath/src/k8s.io"
  ln -sfn "$tree" "$gopath/src/k8s.io/kubernetes"
  log "building kube-apiserver v$K8S_VERSION (about 10 minutes on 2 cores)"
  (
    cd "$gopath/src/k8s.io/kubernetes"
    export GOPATH=$gopath CGO_ENABLED=0 GOFLAGS=-mod=vendor GOCACHE=$CACHE_DIR/go-build
    export KUBE_GIT_VERSION=v$K8S_VERSION KUBE_GIT_TREE_STATE=clean
    make WHAT=cmd/kube-apiserver >"$work/build.log" 2>&1
  ) || { tail -n 40 "$work/build.log" >&2; die "kube-apiserver build failed (log: $work/build.log)"; }
  local built
  built=$(find "$tree/_output" -type f -name kube-apiserver -perm -u+x | head -n1)
  [ -n "$built" ] || die "build finished but no kube-apiserver binary found"
  cp "$built" "$APISERVER.tmp"
  mv "$APISERVER.tmp" "$APISERVER"
  rm -rf "$work"
  log "cached $APISERVER"
}

cmd_install() {
  install_apt
  mkdir -p "$CACHE_DIR"
  build_apiserver
}

make_pki() {
  local pki=$BED_DIR/pki
  [ -f "$pki/apiserver.crt" ] && return 0
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=mpu-sweeper test cluster CA" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >ext.cnf
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile ext.cnf -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

start_etcd() {
  port_open $ETCD_PORT && return 0
  log "starting etcd"
  rm -rf "$BED_DIR/etcd"
  nohup etcd --name mpu-sweeper-test --data-dir "$BED_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "mpu-sweeper-test=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync >"$BED_DIR/etcd.log" 2>&1 &
  echo $! >"$BED_DIR/etcd.pid"
  for _ in $(seq 100); do port_open $ETCD_PORT && return 0; sleep 0.1; done
  tail -n 20 "$BED_DIR/etcd.log" >&2
  die "etcd did not start"
}

# Starts kube-apiserver in the background; also used by tests that restart it.
start_apiserver() {
  port_open $API_PORT && return 0
  log "starting kube-apiserver"
  nohup "$APISERVER" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=$API_PORT --insecure-port=0 \
    --tls-cert-file="$BED_DIR/pki/apiserver.crt" --tls-private-key-file="$BED_DIR/pki/apiserver.key" \
    --client-ca-file="$BED_DIR/pki/ca.crt" \
    --token-auth-file="$BED_DIR/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$BED_DIR/pki/sa.pub" \
    --service-account-signing-key-file="$BED_DIR/pki/sa.key" \
    --api-audiences=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.96.0.0/16 \
    --disable-admission-plugins=ServiceAccount \
    --allow-privileged=false --profiling=false \
    >"$BED_DIR/apiserver.log" 2>&1 &
  echo $! >"$BED_DIR/apiserver.pid"
  for _ in $(seq 300); do
    if curl -sf --cacert "$BED_DIR/pki/ca.crt" -H "Authorization: Bearer $(cat "$ADMIN_TOKEN_FILE")" \
      "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  tail -n 30 "$BED_DIR/apiserver.log" >&2
  die "kube-apiserver did not become ready"
}

write_kubeconfig() {
  local token
  token=$(cat "$ADMIN_TOKEN_FILE")
  cat >"$BED_DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mpu-sweeper-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $BED_DIR/pki/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: mpu-sweeper-test
  context: {cluster: mpu-sweeper-test, user: admin, namespace: default}
current-context: mpu-sweeper-test
EOF
  chmod 600 "$BED_DIR/kubeconfig"
}

cmd_env() {
  cat <<EOF
MPU_TEST_KUBECONFIG=$BED_DIR/kubeconfig
MPU_TEST_KUBE_LOCAL=1
MPU_TEST_KUBE_SERVER=https://127.0.0.1:$API_PORT
MPU_TEST_KUBE_CA=$BED_DIR/pki/ca.crt
EOF
}

cmd_up() {
  cmd_install
  mkdir -p "$BED_DIR"
  make_pki
  if [ ! -f "$ADMIN_TOKEN_FILE" ]; then
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$ADMIN_TOKEN_FILE"
    chmod 600 "$ADMIN_TOKEN_FILE"
  fi
  printf '%s,admin,admin-uid,"system:masters"\n' "$(cat "$ADMIN_TOKEN_FILE")" >"$BED_DIR/tokens.csv"
  start_etcd
  start_apiserver
  write_kubeconfig
  cmd_env >"$ENV_FILE"
  log "kube-apiserver up; environment in $ENV_FILE"
  echo "$ENV_FILE"
}

stop_pidfile() {
  local f=$1
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

cmd_down() {
  stop_pidfile "$BED_DIR/apiserver.pid"
  stop_pidfile "$BED_DIR/etcd.pid"
  log "kube test bed down"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  env) cmd_env ;;
  down) cmd_down ;;
  start-apiserver) start_apiserver ;;
  stop-apiserver) stop_pidfile "$BED_DIR/apiserver.pid" ;;
  *) echo "usage: $0 install|up|env|down|start-apiserver|stop-apiserver" >&2; exit 2 ;;
esac

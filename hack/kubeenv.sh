#!/usr/bin/env bash
# A real Kubernetes API server on 127.0.0.1 for the operator tests: etcd (Debian etcd-server) and
# kube-apiserver built from Debian's `kubernetes` source package (upstream v1.20.2).
#
#   hack/kubeenv.sh install   apt packages, then build whatever is missing of kube-apiserver and
#                             the node's binaries (hack/nodeenv.sh) from one fetch of the source
#   hack/kubeenv.sh up        build kube-apiserver if missing, then start etcd + kube-apiserver if
#                             not running (or restart one started with other flags); prints the env file
#   hack/kubeenv.sh env       print the environment the tests read
#   hack/kubeenv.sh down      stop them
#
# Binaries are cached in ~/.cache/mpu-sweeper as NAME-v1.20.2 (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy; pause-v1.20.2 is the pause container's static binary), with
# Go's build cache in ~/.cache/mpu-sweeper/go-build; state lives in $MPU_KUBEBED_DIR (default
# /tmp/mpu-sweeper-kubebed). Authentication: a static token for an admin in system:masters, client
# certificates from the bed's CA (the node's components); authorization: Node, RBAC;
# service-account tokens from TokenRequest (`kubectl create token SA`) are signed with a key
# generated here, and so are the legacy token secrets of kube-controller-manager (hack/nodeenv.sh).
# The apiserver listens on 127.0.0.1 only; pods reach it through hack/nodeenv.sh's forwarder.
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
# The addresses the node (hack/nodeenv.sh) uses: the apiserver advertises NODE_HOST_IP and
# serves the service range; its certificate names the `kubernetes` service's IP.
# shellcheck source=hack/node/network.sh
. "$(dirname "$0")/node/network.sh"

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
  # The pause binary is static C.
  command -v gcc >/dev/null || missing+=(gcc)
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)

  apt_install "${missing[@]}"
}

# The binaries built from one fetch of the source: the control plane the tests use
# (kube-apiserver) and what hack/nodeenv.sh runs for a real node. Each is cached on its own and
# built only when missing.
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
k8s_bin() { echo "$CACHE_DIR/$1-v$K8S_VERSION"; }
# The pause container's static binary (build/pause), the sandbox of every pod on the node.
PAUSE=$CACHE_DIR/pause-v$K8S_VERSION

# Builds the given commands (names from K8S_COMMANDS, or "pause") that are not cached yet.
build_kubernetes() {
  local wanted=("$@") missing=() c
  for c in "${wanted[@]}"; do
    if [ "$c" = pause ]; then [ -x "$PAUSE" ] || missing+=(pause)
    else [ -x "$(k8s_bin "$c")" ] || missing+=("$c"); fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  # Two scripts may want a build at once (hack/test.sh's background install and an `up`): the
  # second waits for the first, then finds its binaries cached.
  mkdir -p "$CACHE_DIR"
  exec 9>"$CACHE_DIR/build-kubernetes.lock"
  flock 9
  local todo=()
  for c in "${missing[@]}"; do
    if [ "$c" = pause ]; then [ -x "$PAUSE" ] || todo+=(pause)
    else [ -x "$(k8s_bin "$c")" ] || todo+=("$c"); fi
  done
  if [ ${#todo[@]} -eq 0 ]; then exec 9>&-; return 0; fi
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
  # Kubernetes' build script sets GOCACHE to _output/local/go/cache inside the tree, which goes
  # away with it: point that at the cache that stays, so a rebuild compiles only what changed.
  mkdir -p "$tree/_output/local/go" "$CACHE_DIR/go-build"
  ln -sfn "$CACHE_DIR/go-build" "$tree/_output/local/go/cache"
  local what=()
  for c in "${todo[@]}"; do [ "$c" = pause ] || what+=("cmd/$c"); done
  if [ ${#what[@]} -gt 0 ]; then
    log "building ${what[*]} v$K8S_VERSION (cold on 2 cores: ~10 min for kube-apiserver, ~16 for the node's four; with a warm Go cache ~1 min each)"
    local started=$SECONDS
    (
      cd "$gopath/src/k8s.io/kubernetes"
      export GOPATH=$gopath CGO_ENABLED=0 GOFLAGS=-mod=vendor GOCACHE=$CACHE_DIR/go-build
      export KUBE_GIT_VERSION=v$K8S_VERSION KUBE_GIT_TREE_STATE=clean
      make WHAT="${what[*]}" >"$work/build.log" 2>&1
    ) || { tail -n 40 "$work/build.log" >&2; die "kubernetes build failed (log: $work/build.log)"; }
    log "built ${what[*]} in $((SECONDS - started)) s"
    local built
    for c in "${todo[@]}"; do
      [ "$c" = pause ] && continue
      built=$(find "$tree/_output" -type f -name "$c" -perm -u+x | head -n1)
      [ -n "$built" ] || die "build finished but no $c binary found"
      cp "$built" "$(k8s_bin "$c").tmp"
      mv "$(k8s_bin "$c").tmp" "$(k8s_bin "$c")"
      log "cached $(k8s_bin "$c")"
    done
  fi
  if [[ " ${todo[*]} " == *" pause "* ]]; then
    local src
    src=$(find "$tree/build/pause" -name pause.c -path '*linux*' | head -n1)
    [ -n "$src" ] || src=$(find "$tree/build/pause" -name pause.c | head -n1)
    [ -n "$src" ] || die "no build/pause/**/pause.c in the source"
    local tag
    tag=$(sed -n 's/^TAG[ ?:]*= *//p' "$tree/build/pause/Makefile" | head -n1)
    gcc -Os -Wall -Werror -static -DVERSION="v${tag:-unknown}-mpu-sweeper" -o "$PAUSE.tmp" "$src" \
      || die "building the pause binary failed"
    strip "$PAUSE.tmp"
    mv "$PAUSE.tmp" "$PAUSE"
    log "cached $PAUSE (pause ${tag:-?})"
  fi
  rm -rf "$work"
  exec 9>&-
}

# Everything: the apiserver and the node's binaries (hack/nodeenv.sh), in one build.
cmd_install() {
  install_apt
  mkdir -p "$CACHE_DIR"
  build_kubernetes "${K8S_COMMANDS[@]}" pause
}

# Signs pki/NAME.crt for subject SUBJ with the cluster CA; EXT (optional) is an openssl
# extension line (subjectAltName=..., extendedKeyUsage=...).
sign_cert() { # name subject [ext]
  local pki=$BED_DIR/pki
  (
    cd "$pki"
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    printf '%s\n' "${3:-basicConstraints=CA:FALSE}" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  )
}

# Names the apiserver's certificate must carry: loopback for the tests, and for pods the
# `kubernetes` service's IP and names and the address it advertises (NODE_HOST_IP).
APISERVER_SANS="IP:127.0.0.1,DNS:localhost,IP:$KUBERNETES_SERVICE_IP,IP:$NODE_HOST_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"

make_pki() {
  local pki=$BED_DIR/pki
  mkdir -p "$pki"
  if [ ! -f "$pki/ca.key" ]; then
    (
      cd "$pki"
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=mpu-sweeper test cluster CA" \
        -keyout ca.key -out ca.crt 2>/dev/null
      openssl genrsa -out sa.key 2048 2>/dev/null
      openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    )
    rm -f "$pki/apiserver.crt" "$pki/apiserver-kubelet-client.crt"
  fi
  # A bed made before pods could reach the apiserver has a certificate without the service's
  # names: it is replaced (same CA and keys, so every token and kubeconfig stays valid).
  if ! openssl x509 -in "$pki/apiserver.crt" -noout -ext subjectAltName 2>/dev/null \
    | grep -q "IP Address:$KUBERNETES_SERVICE_IP\b"; then
    sign_cert apiserver "/CN=kube-apiserver" "subjectAltName=$APISERVER_SANS"
    APISERVER_CERT_CHANGED=1
  fi
  # The apiserver's client certificate for the kubelet (logs, exec, port-forward).
  [ -f "$pki/apiserver-kubelet-client.crt" ] \
    || sign_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
      "extendedKeyUsage=clientAuth"
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

# The apiserver's command line. Besides the tests' needs (RBAC, TokenRequest tokens), what a
# node needs (hack/nodeenv.sh): the Node authorizer and NodeRestriction for the kubelet, the
# ServiceAccount admission plugin (pods get their token; kube-controller-manager's token
# controller makes the secrets), NODE_HOST_IP advertised as the `kubernetes` service's endpoint
# (a forwarder there reaches 127.0.0.1), a client certificate for the kubelet's API. It still
# listens on 127.0.0.1 only.
apiserver_args() {
  printf '%s\n' "$APISERVER" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address="$NODE_HOST_IP" --secure-port=$API_PORT --insecure-port=0 \
    --tls-cert-file="$BED_DIR/pki/apiserver.crt" --tls-private-key-file="$BED_DIR/pki/apiserver.key" \
    --client-ca-file="$BED_DIR/pki/ca.crt" \
    --token-auth-file="$BED_DIR/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$BED_DIR/pki/sa.pub" \
    --service-account-signing-key-file="$BED_DIR/pki/sa.key" \
    --api-audiences=https://kubernetes.default.svc \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --kubelet-client-certificate="$BED_DIR/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$BED_DIR/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=false --profiling=false
}

# Starts kube-apiserver in the background; also used by tests that restart it.
start_apiserver() {
  port_open $API_PORT && return 0
  log "starting kube-apiserver"
  local args=()
  mapfile -t args < <(apiserver_args)
  nohup "${args[@]}" >"$BED_DIR/apiserver.log" 2>&1 &
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

# An apiserver this script started with other flags or an older certificate (a bed from before
# an upgrade of this script) is restarted once; etcd and so the cluster's objects stay.
restart_stale_apiserver() {
  local f=$BED_DIR/apiserver.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  [ -r "/proc/$pid/cmdline" ] || return 0
  if diff -q <(tr '\0' '\n' <"/proc/$pid/cmdline") <(apiserver_args) >/dev/null \
    && [ -z "${APISERVER_CERT_CHANGED:-}" ]; then
    return 0
  fi
  log "restarting kube-apiserver: its flags or certificate changed"
  stop_pidfile "$f"
  for _ in $(seq 100); do port_open $API_PORT || break; sleep 0.1; done
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
MPU_KUBEENV_SCRIPT=$(cd "$(dirname "$0")" && pwd)/kubeenv.sh
MPU_TEST_KUBE_LOCAL=1
MPU_TEST_KUBE_SERVER=https://127.0.0.1:$API_PORT
MPU_TEST_KUBE_CA=$BED_DIR/pki/ca.crt
EOF
}

cmd_up() {
  install_apt
  # Only kube-apiserver is needed here; when it must be built, the node's binaries are built in
  # the same go (`install` builds whatever is missing).
  [ -x "$APISERVER" ] || build_kubernetes "${K8S_COMMANDS[@]}" pause
  mkdir -p "$BED_DIR"
  make_pki
  if [ ! -f "$ADMIN_TOKEN_FILE" ]; then
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$ADMIN_TOKEN_FILE"
    chmod 600 "$ADMIN_TOKEN_FILE"
  fi
  printf '%s,admin,admin-uid,"system:masters"\n' "$(cat "$ADMIN_TOKEN_FILE")" >"$BED_DIR/tokens.csv"
  start_etcd
  restart_stale_apiserver
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

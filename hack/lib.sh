# Helpers shared by the hack/ scripts; a script sets LOG_TAG, then sources this file.

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Installs the given Debian packages; nothing at all when given none.
apt_install() {
  [ $# -eq 0 ] && return 0
  log "installing from Debian: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

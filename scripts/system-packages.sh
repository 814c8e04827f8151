#!/usr/bin/env bash
# Installs the Debian packages mirror-py's scripts need, only those missing (so a machine that has them is left
# alone and needs no network):
#   system-packages.sh run       what the quickstart and the examples need (the sandbox cluster)
#   system-packages.sh test      that plus what the test suite needs
#   system-packages.sh PKG...    the named packages
# and, for the tests, unpacks (never installs) the Debian packages of clients they use as judges into
# tests/.tools/PKG (gitignored), so that no system-wide kubectl is replaced or needed.
# On a system without dpkg it only says what it would need. Needs root to install.
set -euo pipefail

# The sandbox cluster: namespaces (nsenter, unshare, setpriv), the pods' own files (mount), veth/bridge/NAT,
# cluster DNS, ps in pods, Redis.
RUN=(iproute2 util-linux mount iptables dnsmasq-base procps redis-server)
# The tests also use openssl, a PostgreSQL server (the service example), and the clients port-forward is tested
# with (psql, redis-cli).
TEST=("${RUN[@]}" openssl postgresql postgresql-client redis-tools)
# Judges for the tests: kubectl 1.20 (kubernetes-client), which speaks only SPDY/3.1 for exec.
UNPACK=(kubernetes-client)
TOOLS="${MIRROR_PY_TOOLS:-$(cd "$(dirname "$0")/.." && pwd)/tests/.tools}"

unpack=()
case "${1:-}" in
  run) want=("${RUN[@]}") ;;
  test) want=("${TEST[@]}"); unpack=("${UNPACK[@]}") ;;
  "") echo "usage: $0 run|test|PKG..." >&2; exit 2 ;;
  *) want=("$@") ;;
esac

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  echo "system-packages: not a Debian system; install the equivalents of: ${want[*]}" >&2
  exit 0
fi
missing=()
for pkg in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q ' ok installed$'; then
    missing+=("$pkg")
  fi
done
export DEBIAN_FRONTEND=noninteractive
updated=0
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "system-packages: missing Debian packages: ${missing[*]}; as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "system-packages: installing ${missing[*]}" >&2
  apt-get update -qq
  updated=1
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for pkg in "${unpack[@]}"; do
  [ -e "$TOOLS/$pkg/.unpacked" ] && continue
  echo "system-packages: unpacking $pkg into $TOOLS/$pkg" >&2
  work="$(mktemp -d)"
  if ! (cd "$work" && apt-get download -qq "$pkg" 2>/dev/null); then
    [ "$updated" -eq 1 ] || { apt-get update -qq; updated=1; }
    (cd "$work" && apt-get download -qq "$pkg" 2>/dev/null)
  fi
  rm -rf "$TOOLS/$pkg"
  mkdir -p "$TOOLS/$pkg"
  dpkg -x "$work"/*.deb "$TOOLS/$pkg"
  rm -rf "$work"
  touch "$TOOLS/$pkg/.unpacked"
done

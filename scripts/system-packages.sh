#!/usr/bin/env bash
# Installs the Debian packages mirror-py's scripts need, only those missing (so a machine that has them is left
# alone and needs no network):
#   system-packages.sh run       what the quickstart and the examples need (the sandbox cluster)
#   system-packages.sh test      that plus what the test suite needs
#   system-packages.sh PKG...    the named packages
# On a system without dpkg it only says what it would need. Needs root to install.
set -euo pipefail

# The sandbox cluster: namespaces (nsenter, unshare, setpriv), the pods' own files (mount), veth/bridge/NAT,
# cluster DNS, ps in pods, Redis.
RUN=(iproute2 util-linux mount iptables dnsmasq-base procps redis-server)
# The tests also use openssl and a PostgreSQL server (the service example).
TEST=("${RUN[@]}" openssl postgresql)

case "${1:-}" in
  run) want=("${RUN[@]}") ;;
  test) want=("${TEST[@]}") ;;
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
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-packages: missing Debian packages: ${missing[*]}; as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "system-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

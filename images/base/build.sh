#!/usr/bin/env bash
# Build the offline base image (Debian bookworm + python3) with debootstrap and
# import it as $1 (default distlab/base:bookworm). For machines where
# python:3.11-slim cannot be pulled. The host's CA bundle is copied in, so
# package installs inside later image builds trust the same proxy the host does.
set -euo pipefail
tag=${1:-distlab/base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/distlab-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase \
  --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
rm -f "$root.log"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
# python:3.11-slim has /usr/local/bin/python; give the offline base the same names.
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
  --message "distlab offline base (debootstrap bookworm)" - "$tag" >/dev/null
echo "$tag"

#!/bin/sh
# The test host's init: host keys once, $AUTHORIZED_KEY for root and for `student` (a
# login without root, so a test can see it refused), then sshd in the foreground.
set -e
mkdir -p /run/sshd
[ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -A >/dev/null
if [ -n "${AUTHORIZED_KEY:-}" ]; then
  for home in /root /home/student; do
    mkdir -p "$home/.ssh"
    printf '%s\n' "$AUTHORIZED_KEY" > "$home/.ssh/authorized_keys"
  done
  chown -R student:student /home/student/.ssh
  chmod 700 /root/.ssh /home/student/.ssh
  chmod 600 /root/.ssh/authorized_keys /home/student/.ssh/authorized_keys
fi
exec /usr/sbin/sshd -D -e

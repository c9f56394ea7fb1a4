"""The cluster's image registry: Debian's docker-registry on the manager, TLS with a
certificate made for the manager's address, one user (`distlab`) whose password lives in
`.distlab/secrets/registry-password`. Images are built once on the control machine,
shipped to the manager (docker save, SFTP, docker load) and pushed to the registry;
every other host pulls them from it when a stack needs them (`--with-registry-auth`
hands the manager's login to the workers), so only the manager ever logs in.
"""

from __future__ import annotations

import secrets
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from distlab.cluster.ssh import Shell
from distlab.cluster.state import REGISTRY_PORT, Host
from distlab.errors import ClusterError

REGISTRY_IMAGE = "distlab/registry:debian"
CONTAINER = "distlab-registry"
LABEL = "distlab.cluster=registry"
CONFIG_DIR = "/etc/distlab/registry"
USER = "distlab"
PASSWORD_PATH = Path(".distlab") / "secrets" / "registry-password"
CERTS_D = "/etc/docker/certs.d"
# Distribution's own config, written on the manager; TLS and htpasswd paths are the
# container's view of CONFIG_DIR.
CONFIG = """\
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: /var/lib/docker-registry}
  delete: {enabled: true}
http:
  addr: :5000
  tls: {certificate: /config/registry.crt, key: /config/registry.key}
auth:
  htpasswd: {realm: distlab, path: /config/htpasswd}
"""


def password(root: Path) -> str:
    """The registry password of this checkout, made on first use (owner-only file)."""
    path = root / PASSWORD_PATH
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def trust(shell: Shell, registry: str, certificate: bytes) -> None:
    """Make a host's engine trust the registry's certificate (no restart needed)."""
    shell.run(f"mkdir -p {CERTS_D}/{registry}")
    shell.put(certificate, f"{CERTS_D}/{registry}/ca.crt")


def untrust(shell: Shell, registry: str) -> None:
    shell.run(f"rm -rf {CERTS_D}/{shlex.quote(registry)}")


def start(manager: Shell, host: Host, root: Path, certificate: bytes, key: bytes) -> None:
    """Run the registry on the manager and log the manager's engine in to it."""
    secret = password(root)
    manager.run(f"mkdir -p {CONFIG_DIR} && chmod 700 {CONFIG_DIR}")
    manager.put(certificate, f"{CONFIG_DIR}/registry.crt")
    manager.put(key, f"{CONFIG_DIR}/registry.key", mode=0o600)
    manager.put(CONFIG.encode(), f"{CONFIG_DIR}/config.yml")
    hashed = manager.run(f"docker run --rm --entrypoint htpasswd {REGISTRY_IMAGE} -Bbn "
                         f"{USER} {shlex.quote(secret)}").output.strip()
    manager.put(hashed.encode() + b"\n", f"{CONFIG_DIR}/htpasswd", mode=0o600)
    registry = f"{host.address}:{REGISTRY_PORT}"
    manager.run(f"docker rm -f {CONTAINER} >/dev/null 2>&1; docker run -d --name {CONTAINER} "
                f"--label {LABEL} --restart unless-stopped "
                f"-p {host.address}:{REGISTRY_PORT}:5000 -v {CONFIG_DIR}:/config:ro "
                f"--mount type=volume,src=distlab-registry,dst=/var/lib/docker-registry,"
                f"volume-label=distlab.cluster=registry "
                f"{REGISTRY_IMAGE} serve /config/config.yml")
    # The registry answers within a second or two; login retries until it does.
    manager.run(f"for i in $(seq 1 30); do echo {shlex.quote(secret)} | docker login "
                f"--username {USER} --password-stdin {registry} >/dev/null 2>&1 && exit 0; "
                f"sleep 1; done; docker logs --tail 5 {CONTAINER}; exit 1", timeout=60)


def stop(manager: Shell, registry: str) -> None:
    manager.run(f"docker logout {shlex.quote(registry)} >/dev/null 2>&1; "
                f"docker rm -f {CONTAINER} >/dev/null 2>&1; "
                f"docker volume rm distlab-registry >/dev/null 2>&1; rm -rf {CONFIG_DIR}; "
                "rmdir /etc/distlab 2>/dev/null; true")


def ship(shell: Shell, image: str, *, on_step: Callable[[str], None] = lambda _: None
         ) -> bool:
    """Copy a local image to the host's engine unless it has that very image already;
    True when it was copied (so destroy removes it again)."""
    local = local_engine()
    try:
        wanted = local.images.get(image)
    except docker.errors.ImageNotFound:
        raise ClusterError(f"the image {image} is not built on this machine",
                           hint="run `make images` (DISTLAB_CLUSTER_IMAGES=1 for the "
                                "registry image)") from None
    there = shell.run(f"docker image inspect --format '{{{{.Id}}}}' {image}", check=False)
    if there.returncode == 0 and there.output.strip() == wanted.id:
        return False
    on_step(f"{shell}: copying {image}")
    with tempfile.NamedTemporaryFile(suffix=".tar") as archive:
        for chunk in wanted.save(named=True):
            archive.write(chunk)
        archive.flush()
        remote = f"/tmp/distlab-image-{secrets.token_hex(4)}.tar"
        shell.put_file(Path(archive.name), remote)
    shell.run(f"docker load -q -i {remote}; status=$?; rm -f {remote}; exit $status",
              timeout=600)
    return True


def push(manager: Shell, registry: str, image: str) -> str:
    """Tag an image the manager has with the registry's name and push it; that name."""
    remote = f"{registry}/{image}"
    manager.run(f"docker tag {image} {remote} && docker push -q {remote}", timeout=600)
    return remote


def local_engine(timeout: float = 300) -> docker.DockerClient:
    """This (the control) machine's engine: where images are built, test hosts run."""
    try:
        return docker.from_env(version="auto", timeout=timeout)
    except docker.errors.DockerException as exc:
        raise ClusterError(f"this machine's Docker engine does not answer ({exc})",
                           hint="run scripts/setup-host.sh") from None

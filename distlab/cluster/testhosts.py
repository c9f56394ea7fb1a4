"""Hosts to try `distlab cluster` on one machine: containers running sshd and their own
Docker engine (images/host), on a bridge network of their own, reached over real SSH at
their addresses on it, through exactly the code path used for real hosts.

Docker-in-docker without --privileged (which this kind of machine refuses): the
capabilities, unconfined profiles and cgroup mount DESIGN.md lists ("Where this runs"),
and /var/lib/docker on a volume so the inner engine can use overlay2. Each host gets
the public half of `.distlab/cluster/id_ed25519`, made on first use.

They carry `distlab.cluster=test-host`, not `distlab.lab`: no lab's nemesis or heal
ever acts on them, and `distlab cluster test-hosts --remove` (or `distlab clean`)
removes them.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import docker
import docker.errors
import docker.types

from distlab.cluster.certificate import ssh_key_pair
from distlab.cluster.registry import local_engine
from distlab.errors import ClusterError

IMAGE = "distlab/host:dev"
NETWORK = "distlab-hosts"
LABEL = "distlab.cluster"
VALUE = "test-host"
KEY_PATH = Path(".distlab") / "cluster" / "id_ed25519"
USERS = ("root", "student")  # student: a login without root, to see that refused
SSH_WAIT_SECONDS = 30.0
CAPABILITIES = ["SYS_ADMIN", "NET_ADMIN", "MKNOD", "SYS_PTRACE"]
SECURITY = ["seccomp=unconfined", "apparmor=unconfined"]


def key_path(root: Path) -> Path:
    """The test hosts' SSH key (private half), made once."""
    path = root / KEY_PATH
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        private, public = ssh_key_pair()
        path.write_bytes(private)
        path.chmod(0o600)
        path.with_suffix(".pub").write_bytes(public)
    return path


def make(root: Path, count: int) -> list[str]:
    """Start test hosts host-1..host-N (those missing); their `root@address` specs."""
    if not 1 <= count <= 9:
        raise ClusterError(f"{count} test hosts: give 1 to 9",
                           hint="three make a swarm with a manager and two workers")
    engine = local_engine(120)
    try:
        engine.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        raise ClusterError(f"the test host image {IMAGE} is not built",
                           hint="DISTLAB_CLUSTER_IMAGES=1 make images") from None
    public = key_path(root).with_suffix(".pub").read_text().strip()
    network = _network(engine)
    for index in range(1, count + 1):
        name = f"distlab-host-{index}"
        try:
            engine.containers.get(name)
            continue
        except docker.errors.NotFound:
            pass
        _start(engine, name, index, network.name, public)
    addresses = [_address(engine, f"distlab-host-{i}") for i in range(1, count + 1)]
    for address in addresses:
        _wait_for_ssh(address)
    return [f"root@{address}" for address in addresses]


def _start(engine: docker.DockerClient, name: str, index: int, network: str,
           public_key: str) -> None:
    api = engine.api
    host_config = api.create_host_config(
        cap_add=CAPABILITIES, security_opt=SECURITY, cgroupns="host", network_mode=network,
        binds={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
        mounts=[docker.types.Mount("/var/lib/docker", f"{name}-docker", type="volume",
                                   labels={LABEL: VALUE})])
    # `--security-opt systempaths=unconfined` is the CLI's name for these two (docker-py
    # has no option for them): /proc and /sys unmasked, so the inner engine can set up
    # its containers' namespaces.
    host_config.update(MaskedPaths=[], ReadonlyPaths=[])
    try:
        created = api.create_container(IMAGE, name=name, hostname=f"host-{index}",
                                       labels={LABEL: VALUE},
                                       environment={"AUTHORIZED_KEY": public_key},
                                       host_config=host_config)
        api.start(created["Id"])
    except docker.errors.APIError as exc:
        raise ClusterError(f"cannot start test host {name}: {exc.explanation or exc}",
                           hint="`distlab doctor` checks the engine; DESIGN.md lists what "
                                "Docker-in-Docker needs here") from None


def _network(engine: docker.DockerClient):
    found = engine.networks.list(names=[NETWORK])
    if found:
        return found[0]
    return engine.networks.create(NETWORK, driver="bridge", labels={LABEL: VALUE})


def _address(engine: docker.DockerClient, name: str) -> str:
    container = engine.containers.get(name)
    if container.status != "running":
        raise ClusterError(f"test host {name} is {container.status}: "
                           f"{container.logs(tail=3).decode(errors='replace').strip()}",
                           hint="distlab cluster test-hosts --remove, then make them again")
    return container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]


def _wait_for_ssh(address: str) -> None:
    deadline = time.monotonic() + SSH_WAIT_SECONDS
    while True:
        try:
            with socket.create_connection((address, 22), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ClusterError(f"test host {address}: sshd does not answer",
                                   hint="docker logs distlab-host-N shows why") from None
            time.sleep(0.3)


def remove(root: Path) -> int:
    """Remove every test host, its engine's volume and their network; how many hosts."""
    engine = local_engine(120)
    hosts = engine.containers.list(all=True, filters={"label": f"{LABEL}={VALUE}"})
    for container in hosts:
        container.remove(force=True, v=True)
    for volume in engine.volumes.list(filters={"label": f"{LABEL}={VALUE}"}):
        volume.remove(force=True)
    for network in engine.networks.list(filters={"label": f"{LABEL}={VALUE}"}):
        network.remove()
    return len(hosts)

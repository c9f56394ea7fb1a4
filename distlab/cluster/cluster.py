"""Make, read and undo a cluster: the steps behind `distlab cluster create|status|destroy`.

`create` checks every host before it changes any (reachable, the key accepted, root,
not in another swarm), so a bad host leaves nothing half-made; if a later step fails,
what was made is undone before the error is shown. `destroy` undoes exactly what
`create` did, host by host, and says what it could not undo.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from distlab.cluster import registry, state
from distlab.cluster.certificate import self_signed
from distlab.cluster.hosts import HostSpec
from distlab.cluster.ssh import Shell
from distlab.cluster.state import REGISTRY_PORT, STACK_DIR, ClusterState, Host
from distlab.errors import ClusterError, DistlabError

# The checkout's own script, pushed to each host as it is (the same one CI runs here).
SETUP_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-host.sh"
REMOTE_SETUP = "/tmp/distlab-setup-host.sh"
LAB_IMAGES = ("distlab/node:dev",)  # what a lab's stack pulls from the registry
HOST_LABEL = "distlab.host"
Step = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def on_each(shells: Sequence[Shell], action: Callable[[Shell], object]) -> list:
    """Run `action` on every host at once; every host's error, not just the first."""
    with ThreadPoolExecutor(max_workers=max(len(shells), 1)) as pool:
        futures = [pool.submit(action, shell) for shell in shells]
    results, errors = [], []
    for shell, future in zip(shells, futures, strict=True):
        try:
            results.append(future.result())
        except DistlabError as exc:
            errors.append((shell, exc))
    if errors:
        if len(errors) == 1:
            raise errors[0][1]
        first = errors[0][1]
        raise ClusterError("; ".join(str(e) for _, e in errors), hint=first.hint)
    return results


def swarm_state(shell: Shell) -> str:
    """inactive, pending, active, error or locked; "inactive" with no engine yet."""
    result = shell.run("command -v docker >/dev/null && docker info --format "
                       "'{{.Swarm.LocalNodeState}}' 2>/dev/null || echo inactive", check=False)
    return result.output.strip().splitlines()[-1] if result.output.strip() else "inactive"


def _preflight(shell: Shell) -> None:
    shell.connect()
    shell.check_root()
    joined = swarm_state(shell)
    if joined not in ("inactive", ""):
        raise ClusterError(
            f"{shell.host}: its engine is already in a swarm ({joined})",
            hint=f"on {shell.host.address}, `docker swarm leave --force` takes it out of "
                 "that swarm (its services there stop), or give another host")


def _setup(shell: Shell) -> None:
    shell.put(SETUP_SCRIPT.read_bytes(), REMOTE_SETUP, mode=0o755)
    try:
        shell.run(f"bash {REMOTE_SETUP}; status=$?; rm -f {REMOTE_SETUP}; exit $status",
                  timeout=900)
    except DistlabError as exc:
        raise ClusterError(f"{shell.host}: scripts/setup-host.sh failed: {exc}",
                           hint="run it there by hand to see all of its output") from None


def _advertised_address(shell: Shell) -> str:
    """The host's own address on the connection the control machine uses: what the
    others can reach it on. sshd says it in $SSH_CONNECTION (client, port, server, port)."""
    words = shell.run("echo $SSH_CONNECTION", as_root=False).output.split()
    return words[2] if len(words) == 4 else shell.host.address


def create(root: Path, specs: Sequence[HostSpec], *, identity: Path | None = None,
           on_step: Step = _quiet) -> ClusterState:
    if state.load(root) is not None:
        raise ClusterError("a cluster exists already (.distlab/cluster.json)",
                           hint="`distlab cluster status` shows it; "
                                "`distlab cluster destroy` removes it")
    if identity is not None and not identity.exists():
        raise ClusterError(f"no key file {identity}", hint="name a private key file "
                           "that exists (e.g. ~/.ssh/id_ed25519)")
    shells = [Shell(spec, identity=identity) for spec in specs]
    try:
        on_step(f"checking {len(shells)} hosts (SSH, root, not in a swarm)")
        on_each(shells, _preflight)
        made = ClusterState([Host(str(s.host), f"host-{i}", "", manager=(i == 1))
                             for i, s in enumerate(shells, 1)],
                            str(identity) if identity else None)
        try:
            _build(root, shells, made, on_step)
        except BaseException:
            on_step("a step failed: undoing what was made")
            _undo(shells, made, lambda _: None)
            raise
        made.save(root)
        return made
    finally:
        for shell in shells:
            shell.close()


def _build(root: Path, shells: list[Shell], made: ClusterState, on_step: Step) -> None:
    for host, now in zip(made.hosts, on_each(shells, lambda s: s.run(
            "date -u +%Y-%m-%dT%H:%M:%SZ").output.strip()), strict=True):
        host.since = now
    on_step("running scripts/setup-host.sh on every host (Docker engine)")
    on_each(shells, _setup)
    for host, address in zip(made.hosts, on_each(shells, _advertised_address), strict=True):
        host.address = address
    manager, manager_shell = made.hosts[0], shells[0]
    on_step(f"swarm init on {manager.name} ({manager.address})")
    manager_shell.run(f"docker swarm init --advertise-addr {manager.address}")
    tokens = {role: manager_shell.run(f"docker swarm join-token -q {role}").output.strip()
              for role in ("manager", "worker")}
    others = list(zip(made.hosts[1:], shells[1:], strict=True))
    for host, _ in others[:managers_of(len(made.hosts)) - 1]:
        host.manager = True
    if others:
        on_step("swarm join: " + ", ".join(
            f"{h.name} ({'manager' if h.manager else 'worker'})" for h, _ in others))

        def join(shell: Shell) -> None:
            host = _host_of(made, shell)
            token = tokens["manager" if host.manager else "worker"]
            shell.run(f"docker swarm join --token {token} --advertise-addr {host.address} "
                      f"{manager.address}:2377")

        on_each([s for _, s in others], join)
    for host, node in zip(made.hosts, on_each(shells, lambda s: s.run(
            "docker info --format '{{.Swarm.NodeID}}'").output.strip()), strict=True):
        host.node = node
        manager_shell.run(f"docker node update --label-add {HOST_LABEL}={host.name} {node}")
    _start_registry(root, shells, made, on_step)


def managers_of(hosts: int) -> int:
    """Swarm managers for a cluster of `hosts`: three from three hosts on (Raft keeps
    working with one of them lost), five from seven; one below three (two managers would
    stop at the loss of either)."""
    return 5 if hosts >= 7 else 3 if hosts >= 3 else 1


def _host_of(made: ClusterState, shell: Shell) -> Host:
    return next(h for h in made.hosts if h.spec == str(shell.host))


def _start_registry(root: Path, shells: list[Shell], made: ClusterState,
                    on_step: Step) -> None:
    manager, manager_shell = made.hosts[0], shells[0]
    made.registry = f"{manager.address}:{REGISTRY_PORT}"
    certificate, key = self_signed(manager.address)
    on_step(f"registry on {manager.name}: {made.registry} (TLS, login)")
    on_each(shells, lambda s: registry.trust(s, made.registry, certificate))
    if registry.ship(manager_shell, registry.REGISTRY_IMAGE, on_step=on_step):
        manager.loaded_images.append(registry.REGISTRY_IMAGE)
    registry.start(manager_shell, manager, root, certificate, key)
    for image in LAB_IMAGES:
        if registry.ship(manager_shell, image, on_step=on_step):
            manager.loaded_images.append(image)
        on_step(f"pushing {image} to {made.registry}")
        registry.push(manager_shell, made.registry, image)
        manager.loaded_images.append(f"{made.registry}/{image}")


def _undo_host(shell: Shell, host: Host, registry_address: str) -> None:
    """Leave the host as create found it: no distlab service, container or volume, not in
    the swarm, no registry trust, none of the images create loaded."""
    if registry_address.startswith(f"{host.address}:"):  # the registry runs here
        registry.stop(shell, registry_address)
    shell.run("docker ps -aq --filter label=distlab.lab | xargs -r docker rm -f >/dev/null; "
              "docker swarm leave --force >/dev/null 2>&1; "
              "docker volume ls -q --filter label=distlab.lab | xargs -r docker volume rm "
              ">/dev/null; docker network ls -q --filter label=distlab.lab | xargs -r "
              "docker network rm >/dev/null 2>&1; "
              f"rm -rf {STACK_DIR}; rmdir /etc/distlab 2>/dev/null; true", timeout=180)
    if registry_address:
        registry.untrust(shell, registry_address)
        # What the swarm pulled from the registry, on every host.
        # Tasks pull by digest, so those have no tag: found by repository, removed by ID.
        shell.run(f"docker images --format '{{{{.Repository}}}} {{{{.ID}}}}' | grep -F "
                  f"{shlex.quote(registry_address + '/')} | cut -d' ' -f2 | sort -u | "
                  "xargs -r docker image rm -f >/dev/null 2>&1; true", timeout=180)
    if host.loaded_images:
        shell.run("docker image rm -f " + " ".join(map(shlex.quote, host.loaded_images))
                  + " >/dev/null 2>&1; true", timeout=180)
    made_volumes = _volumes_made_since(shell, host.since)
    if made_volumes:
        shell.run("docker volume rm " + " ".join(made_volumes) + " >/dev/null", check=False)


def _volumes_made_since(shell: Shell, since: str) -> list[str]:
    """Dangling volumes the host's engine made after `since` (its tasks' anonymous ones)."""
    if not since:
        return []
    listed = shell.run("docker volume ls -q -f dangling=true | xargs -r docker volume "
                       "inspect --format '{{.Name}} {{.CreatedAt}}'", check=False).output
    return [shlex.quote(name) for name in made_since(listed, since)]


def made_since(listing: str, since: str) -> list[str]:
    """The names in `name created-at` lines created at or after `since` (both RFC 3339;
    an engine may write its local offset); lines that are not that are left alone."""
    start = datetime.fromisoformat(since)
    made = []
    for line in listing.splitlines():
        name, _, created = line.partition(" ")
        try:
            if datetime.fromisoformat(created.strip()) >= start:
                made.append(name)
        except ValueError:
            continue
    return made


def _undo(shells: Sequence[Shell], made: ClusterState, on_step: Step) -> list[str]:
    """Undo on every host; what could not be undone, one line per host."""
    leftovers = []

    def undo(shell: Shell) -> None:
        host = _host_of(made, shell)
        on_step(f"{host.name} ({shell.host}): leaving the swarm, removing what distlab made")
        try:
            shell.connect()
            shell.check_root()
            _undo_host(shell, host, made.registry)
        except DistlabError as exc:
            leftovers.append(f"{host.name}: {exc}")

    # Workers first, so the manager's swarm does not keep waiting for them.
    workers = [s for s in shells if not _host_of(made, s).manager]
    on_each(workers, undo)
    on_each([s for s in shells if _host_of(made, s).manager], undo)
    return leftovers


def destroy(root: Path, *, on_step: Step = _quiet) -> list[str]:
    """Undo the cluster; the hosts that could not be cleaned (kept in the state file, so
    `destroy` can be run again), or [] when every host is as it was."""
    made = state.load(root)
    if made is None:
        raise ClusterError("there is no cluster to destroy (.distlab/cluster.json)",
                           hint="`distlab cluster create HOST...` makes one")
    shells = _shells(made)
    try:
        leftovers = _undo(shells, made, on_step)
    finally:
        for shell in shells:
            shell.close()
    failed = {line.split(":", 1)[0] for line in leftovers}
    if failed:
        made.hosts = [h for h in made.hosts if h.name in failed]
        made.save(root)
    else:
        state.forget(root)
    return leftovers


def _shells(made: ClusterState) -> list[Shell]:
    from distlab.cluster.hosts import parse_host

    identity = Path(made.identity) if made.identity else None
    return [Shell(parse_host(h.spec), identity=identity) for h in made.hosts]


@dataclass(frozen=True)
class HostStatus:
    name: str
    spec: str
    address: str
    reachable: bool
    engine: str = "-"  # the Docker engine's version
    role: str = "-"  # manager, worker, or what the host says it is
    node_state: str = "-"  # ready, down (the manager's view)
    problem: str = ""


def status(root: Path) -> tuple[ClusterState, list[HostStatus], str]:
    """Each host as it answers now, and the registry's state ("running", or why not)."""
    made = state.load(root)
    if made is None:
        raise ClusterError("there is no cluster (.distlab/cluster.json)",
                           hint="`distlab cluster create HOST...` makes one; "
                                "`distlab cluster test-hosts 3` makes hosts to try it on")
    shells = _shells(made)
    try:
        first = shells[0]  # the first host: a manager, and the registry's
        nodes = _node_states(first)

        def look(shell: Shell) -> HostStatus:
            host = _host_of(made, shell)
            try:
                shell.connect()
                shell.check_root()
                engine = shell.run("docker version --format '{{.Server.Version}}'",
                                   check=False).output.strip() or "not answering"
                joined = swarm_state(shell)
            except DistlabError as exc:
                return HostStatus(host.name, host.spec, host.address, False, problem=str(exc))
            role = ("manager" if host.manager else "worker") if joined == "active" else joined
            return HostStatus(host.name, host.spec, host.address, True, engine, role,
                              nodes.get(host.node, "-"))

        hosts = on_each(shells, look)
        registry_state = "-"
        manager_status = next(h for h in hosts if h.name == made.manager.name)
        if made.registry and manager_status.reachable:
            registry_state = first.run(
                f"docker inspect --format '{{{{.State.Status}}}}' {registry.CONTAINER}",
                check=False).output.strip() or "missing"
        return made, hosts, registry_state
    finally:
        for shell in shells:
            shell.close()


def _node_states(manager: Shell) -> dict[str, str]:
    try:
        manager.connect()
        manager.check_root()
        lines = manager.run("docker node ls --format '{{.ID}} {{.Status}}'",
                            check=False).output.split("\n")
    except DistlabError:
        return {}
    return {words[0]: words[1].lower() for words in (line.split() for line in lines)
            if len(words) == 2}

"""SwarmRuntime: a lab deployed as a stack on the cluster `distlab cluster create` made.

The lab's services come from the same compose.yaml, rendered by Compose on this
machine and adapted for Swarm in one place (distlab.runtime.stack); `docker stack
deploy` runs on the manager over SSH. Machines keep their names: task slot 2 of
service `app` is `app-2`, wherever Swarm placed it. Everything a machine is asked to
do goes to the engine of the host that runs it, over that host's SSH connection.

What differs from Compose, because Swarm is an orchestrator:
- A task whose container exits (killed, stopped) is replaced by a new one in the
  same slot, on whichever host Swarm picks: the machine comes back by itself, with a
  new container. `start` of a machine whose slot runs again does nothing; `restart`
  stops the task and waits for its replacement.
- A task whose health check fails three times in a row, 10 s apart (a machine paused
  for more than about 30 s), is replaced too, as a Kubernetes liveness probe would
  (distlab.runtime.stack makes the checks that patient).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from distlab import credential
from distlab.cluster import state as cluster_state
from distlab.cluster.hosts import parse_host
from distlab.cluster.ssh import Shell
from distlab.cluster.state import STACK_DIR
from distlab.commands import Result, Runner
from distlab.errors import ClusterError, CommandFailed, DistlabError, UnknownMachine, UsageError
from distlab.runtime import stack
from distlab.runtime.base import GRPC_PORT, CleanReport, MachineInfo, Runtime, file_archive
from distlab.runtime.compose import (
    CONTRACT_LABEL,
    EPHEMERAL_LABEL,
    LAB_LABEL,
    PROJECT,
    ROLE_LABEL,
    ComposeRuntime,
)

STACK = PROJECT  # services are distlab_<service>
HOST_LABEL = "distlab.host"  # which host a machine runs on (set on every node by create)
FILES_DIR = f"{STACK_DIR}/files"  # the project's files services bind-mount, on every host
TASK_NAME = "com.docker.swarm.task.name"
SERVICE_NAME = "com.docker.swarm.service.name"
STACK_LABEL = "com.docker.stack.namespace"
DEPLOY_SECONDS = 300.0
REPLACED_WAIT_SECONDS = 120.0


@dataclass(frozen=True)
class Task:
    """One task container as its host's engine reports it."""

    host: str  # host-2
    info: MachineInfo
    created: str


class SwarmRuntime(Runtime):
    def __init__(self, root: Path, *, runner: Runner | None = None) -> None:
        self.root = root
        self.cluster = cluster_state.load(root)
        if self.cluster is None:
            raise ClusterError("there is no cluster to run on (.distlab/cluster.json)",
                               hint="`distlab cluster create HOST...` makes one "
                                    "(`distlab cluster test-hosts 3` to try it here)")
        self.runner = runner or Runner()
        self._compose = ComposeRuntime(root, runner=self.runner)  # renders compose.yaml
        identity = Path(self.cluster.identity) if self.cluster.identity else None
        self._shells = {h.name: Shell(parse_host(h.spec), identity=identity)
                        for h in self.cluster.hosts}
        self._addresses = {h.name: h.address for h in self.cluster.hosts}
        self._lock = threading.Lock()
        self._where: dict[str, str] = {}  # container -> host, from the last listing

    # -- the hosts ----------------------------------------------------------------------------

    def shell(self, host: str) -> Shell:
        shell = self._shells[host]
        with self._lock:  # one SSH handshake per host, whichever thread asks first
            shell.connect()
            shell.check_root()
        return shell

    @property
    def manager(self) -> Shell:
        """A manager whose engine answers: the first host's, else another's (a swarm of
        three or more hosts has three managers, so it outlives the loss of one)."""
        managers = [h.name for h in self.cluster.hosts if h.manager]
        problems = []
        for name in managers:
            try:
                shell = self.shell(name)
                if shell.run("docker node ls -q >/dev/null", check=False,
                             timeout=20).returncode == 0:
                    return shell
                problems.append(f"{name}: its engine is not a working manager")
            except DistlabError as exc:
                problems.append(str(exc))
        raise ClusterError(f"no manager of the swarm answers: {'; '.join(problems)}",
                           hint="`distlab cluster status`; `distlab heal` starts stopped "
                                "engines again")

    def hosts(self) -> list[str]:
        return [h.name for h in self.cluster.hosts]

    def _on_hosts(self, action: Callable[[str], object]) -> dict[str, object]:
        """`action(host)` on every host at once: {host: result or the DistlabError}."""
        with ThreadPoolExecutor(max_workers=len(self._shells)) as pool:
            futures = {host: pool.submit(action, host) for host in self._shells}
        results: dict[str, object] = {}
        for host, future in futures.items():
            try:
                results[host] = future.result()
            except DistlabError as exc:
                results[host] = exc
        return results

    # -- lifecycle ----------------------------------------------------------------------------

    def up(self, profiles: Sequence[str], scale: dict[str, int], *,
           on_line: Callable[[str], None] | None = None,
           environment: Mapping[str, str] | None = None,
           placement: Mapping[str, str] | None = None) -> None:
        say = on_line or (lambda _: None)
        project = self.render(profiles, environment)
        # The lab's services and the common ones (Prometheus), as Compose picks them.
        services = [name for name, service in project["services"].items()
                    if not service.get("profiles") or set(service["profiles"]) & set(profiles)]
        copies = stack.project_files(project, services, str(self.root), FILES_DIR)
        adapted = stack.to_stack(project, services=services, scale=scale,
                                 registry=self.cluster.registry, placement=placement or {},
                                 copies=copies)
        for note in adapted.notes:
            say(f"swarm: {note}")
        manager = self.manager
        self._publish({project["services"][name]["image"] for name in services}, say)
        if copies:
            self._copy_files(copies, say)
        manager.run(f"mkdir -p {STACK_DIR} && chmod 700 {STACK_DIR}")
        # File secrets are read by `docker stack deploy` where it runs: the manager.
        for name, secret in (adapted.file.get("secrets") or {}).items():
            if "file" in secret:
                manager.put(Path(secret["file"]).read_bytes(), f"{STACK_DIR}/{name}",
                            mode=0o600)
                secret["file"] = f"{STACK_DIR}/{name}"
        manager.put(yaml.safe_dump(adapted.file, sort_keys=False).encode(),
                    f"{STACK_DIR}/stack.yaml", mode=0o600)
        say(f"docker stack deploy {STACK} ({len(services)} services) on "
            f"{self.cluster.manager.name}")
        result = manager.run(f"docker stack deploy --with-registry-auth --prune "
                             f"--resolve-image never -c {STACK_DIR}/stack.yaml {STACK}",
                             timeout=DEPLOY_SECONDS, check=False)
        for line in result.output.splitlines():
            say(line)
        if result.returncode != 0:
            raise CommandFailed(["docker", "stack", "deploy", STACK], result.returncode,
                                result.output, where=self.cluster.manager.name)
        # Compose has made every container when it returns; Swarm only has the services:
        # wait until every machine exists, so the Testbed's health wait sees them all.
        wanted = {name: spec["deploy"].get("replicas", 1)
                  for name, spec in adapted.file["services"].items()}
        self._wait_for_machines(wanted, say)

    def _wait_for_machines(self, wanted: Mapping[str, int], say: Callable[[str], None]
                           ) -> None:
        deadline = time.monotonic() + DEPLOY_SECONDS
        while True:
            have: dict[str, int] = {}
            for info in self.machines():
                if info.state in ("running", "paused"):
                    have[info.service] = have.get(info.service, 0) + 1
            missing = {s: n - have.get(s, 0) for s, n in wanted.items() if have.get(s, 0) < n}
            if not missing:
                return
            if time.monotonic() > deadline:
                raise DistlabError(
                    f"Swarm did not start every machine within {DEPLOY_SECONDS:.0f} s: "
                    + ", ".join(f"{s} {n} missing" for s, n in sorted(missing.items())),
                    hint=f"`docker service ps {STACK}_SERVICE --no-trunc` on a manager "
                         "says why (an image not pulled, no host that fits)")
            say(f"waiting for Swarm: {sum(missing.values())} machines not started yet")
            time.sleep(1.0)

    def _publish(self, images: set[str], say: Callable[[str], None]) -> None:
        """Put this machine's build of each image in the cluster registry (a copy only
        when the manager's differs: a rebuilt image is pushed again)."""
        from distlab.cluster import registry

        for image in sorted(images):
            if registry.ship(self.manager, image, on_step=say):
                say(f"pushing {image} to {self.cluster.registry}")
                registry.push(self.manager, self.cluster.registry, image)

    def _copy_files(self, copies: Mapping[str, str], say: Callable[[str], None]) -> None:
        """The project's files that services mount (Prometheus's configuration), put on
        every host: Swarm may run the service on any. Unpacked over the copy already
        there, never into a new directory: a running task keeps the one it mounted."""
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for local, remote in sorted(copies.items()):
                tar.add(local, arcname=remote.removeprefix(FILES_DIR + "/"))
        content = archive.getvalue()
        say(f"copying {', '.join(sorted(Path(p).name for p in copies))} to every host")
        staged = f"{STACK_DIR}/files.tar"

        def put(host: str) -> None:
            shell = self.shell(host)
            shell.run(f"mkdir -p {FILES_DIR} && chmod 700 {STACK_DIR}")
            shell.put(content, staged, mode=0o600)
            shell.run(f"tar -xf {staged} -C {FILES_DIR} --no-same-owner; status=$?; "
                      f"rm -f {staged}; exit $status")

        failed = [f"{host}: {result}" for host, result in self._on_hosts(put).items()
                  if isinstance(result, DistlabError)]
        if failed:
            raise ClusterError(f"could not copy the lab's files to every host: "
                               f"{'; '.join(failed)}",
                               hint="`distlab cluster status`; `distlab heal` starts stopped "
                                    "engines and clears host faults")

    def web_url(self, role: str, port: int) -> str:
        """On the host Swarm runs the machine on, at the port it publishes there (host
        mode: on every interface of that host); the first host's when it runs nowhere."""
        for info in self.machines():
            if info.role == role and info.state == "running":
                return f"http://{self._addresses[info.host]}:{port}"
        return f"http://{self.cluster.manager.address}:{port}"

    def render(self, profiles: Sequence[str], environment: Mapping[str, str] | None
               ) -> dict:
        """compose.yaml as Compose resolves it for `profiles` (variables, anchors, images)."""
        credential.ensure(self.root)  # Compose wants the secret's file to exist
        args = [a for p in profiles for a in ("--profile", p)] + ["config", "--format", "json"]
        env = {**os.environ, **environment} if environment else None
        return json.loads(self.runner.run(self._compose.compose_argv(*args), timeout=60,
                                          env=env).output)

    def down(self) -> CleanReport:
        return self._remove_stack(volumes=False)

    def clean(self) -> CleanReport:
        return self._remove_stack(volumes=True)

    def _remove_stack(self, *, volumes: bool) -> CleanReport:
        """`docker stack rm`, then on every host whatever the stack left (its containers
        stop with a grace period; the networks go once they are empty)."""
        notes: list[str] = []
        try:
            self.manager.run(f"docker stack rm {STACK} >/dev/null 2>&1; true", timeout=120)
        except DistlabError as exc:
            notes.append(f"docker stack rm on {self.cluster.manager.name}: {exc}")

        def sweep(host: str) -> tuple[int, int, int]:
            shell = self.shell(host)
            label = f"label={STACK_LABEL}={STACK}"
            out = shell.run(
                f"c=$(docker ps -aq --filter {label}); [ -n \"$c\" ] && docker rm -f -v $c "
                f">/dev/null; echo $c | wc -w; "
                f"for i in $(seq 30); do [ -z \"$(docker network ls -q --filter {label})\" ] "
                f"&& break; docker network ls -q --filter {label} | xargs -r docker network rm "
                f">/dev/null 2>&1; sleep 1; done; docker network ls -q --filter {label} | wc -l; "
                + (f"v=$(docker volume ls -q --filter {label}); [ -n \"$v\" ] && docker volume "
                   f"rm $v >/dev/null; echo $v | wc -w" if volumes else "echo 0"),
                timeout=180).output.split()
            return int(out[0]), int(out[1]), int(out[2])

        containers = networks = removed_volumes = 0
        leftovers: list[str] = []
        for host, result in self._on_hosts(sweep).items():
            if isinstance(result, DistlabError):
                leftovers.append(f"host {host}: {result}")
                continue
            containers += result[0]
            removed_volumes += result[2]
            if result[1]:
                leftovers.append(f"host {host}: {result[1]} stack networks still in use")
            networks += 0 if result[1] else 1
        return CleanReport(containers, networks, removed_volumes, tuple(leftovers),
                           tuple(notes))

    # -- machines -----------------------------------------------------------------------------

    def machines(self) -> list[MachineInfo]:
        """Every host's task containers, one per machine. A host that does not answer
        (stopped, cut off) is left out: its machines are lost to the lab until Swarm runs
        them elsewhere, which is what a user of the lab sees too."""
        tasks: list[Task] = []
        results = self._on_hosts(self._tasks_on)
        if all(isinstance(r, DistlabError) for r in results.values()):
            raise next(iter(results.values()))
        for result in results.values():
            if not isinstance(result, DistlabError):
                tasks.extend(result)
        current = current_tasks(tasks)
        with self._lock:
            self._where = {t.info.container: t.host for t in tasks}
        return sorted((t.info for t in current), key=_machine_order)

    def _tasks_on(self, host: str) -> list[Task]:
        listing = self.shell(host).run(
            f"ids=$(docker ps -aq --filter label={STACK_LABEL}={STACK}) || exit 1; "
            "if [ -z \"$ids\" ]; then echo '[]'; else docker inspect $ids; fi",
            timeout=30).output
        return [task for raw in json.loads(listing or "[]")
                if (task := task_of(raw, host, self._addresses[host])) is not None]

    def host_of(self, container: str) -> str:
        with self._lock:
            host = self._where.get(container)
        if host is None:
            self.machines()
            with self._lock:
                host = self._where.get(container)
        if host is None:
            raise UnknownMachine(f"no container {container!r} on the cluster's hosts")
        return host

    def _docker(self, container: str, command: str, *, timeout: float = 60.0,
                check: bool = True) -> Result:
        """`docker COMMAND` on the host running `container`; `{}` in COMMAND is the
        container's name (else it goes last)."""
        name = shlex.quote(container)
        line = command.replace("{}", name) if "{}" in command else f"{command} {name}"
        return self.shell(self.host_of(container)).run(f"docker {line}", timeout=timeout,
                                                       check=check)

    def signal(self, container: str, signal: str) -> None:
        self._docker(container, f"kill --signal {shlex.quote(signal)}")

    def stop(self, container: str, timeout: float) -> None:
        self._docker(container, f"stop --time {int(timeout)}", timeout=timeout + 60)

    def start(self, container: str) -> None:
        """Swarm starts a stopped task's replacement by itself: wait for the slot to run
        again (a task container is never started by hand: Swarm would not know it)."""
        self._wait_for_slot(container)

    def restart(self, container: str, timeout: float) -> None:
        self.stop(container, timeout)
        self._wait_for_slot(container)

    def _wait_for_slot(self, container: str) -> None:
        wanted = machine_name(container)
        deadline = time.monotonic() + REPLACED_WAIT_SECONDS
        while time.monotonic() < deadline:
            for info in self.machines():
                if info.name == wanted and info.state == "running":
                    return
            time.sleep(1.0)
        raise DistlabError(f"{wanted}: Swarm did not run it again within "
                           f"{REPLACED_WAIT_SECONDS:.0f} s",
                           hint=f"`docker service ps {STACK}_{wanted.rpartition('-')[0]}` "
                                "on the manager says why")

    def remove(self, container: str) -> None:
        self._docker(container, "rm -f")

    def pause(self, container: str) -> None:
        self._docker(container, "pause")

    def unpause(self, container: str) -> None:
        self._docker(container, "unpause")

    def exec(self, container: str, argv: Sequence[str], *, user: str = "root",
             timeout: float = 30.0, check: bool = True) -> Result:
        command = " ".join(shlex.quote(a) for a in argv)
        result = self._docker(container, f"exec --user {shlex.quote(user)} {{}} {command}",
                              timeout=timeout, check=False)
        result = Result(tuple(argv), result.returncode, result.output)
        if check and result.returncode != 0:
            raise CommandFailed(list(argv), result.returncode, result.output, where=container)
        return result

    def logs(self, container: str, tail: int) -> str:
        return self._docker(container, f"logs --tail {int(tail)}", check=False).output

    def put_file(self, container: str, path: str, content: bytes) -> None:
        directory, archive = file_archive(path, content)
        shell = self.shell(self.host_of(container))
        staged = f"/tmp/distlab-put-{abs(hash((container, path)))}.tar"
        shell.put(archive, staged, mode=0o600)
        shell.run(f"docker cp - {shlex.quote(container)}:{shlex.quote(directory)} "
                  f"< {staged}; status=$?; rm -f {staged}; exit $status")

    def stop_host(self, host: str) -> None:
        self._check_host(host)
        self.shell(host).run(STOP_ENGINE, timeout=90)

    def start_host(self, host: str) -> None:
        self._check_host(host)
        self.shell(host).run(START_ENGINE, timeout=90)

    def partition_host(self, host: str) -> None:
        self._check_host(host)
        others = [a for name, a in self._addresses.items() if name != host]
        self.shell(host).run(partition_commands(others))

    def slow_link(self, host: str, other: str, rate: str) -> None:
        for name in (host, other):
            self._check_host(name)
        if host == other:
            raise UsageError(f"a link joins two hosts: {host} twice",
                             hint=f"hosts: {', '.join(self.hosts())}")
        self.shell(host).run(slow_link_commands(self._addresses[other], rate))
        self.shell(other).run(slow_link_commands(self._addresses[host], rate))

    def heal_host(self, host: str) -> None:
        self._check_host(host)
        shell = self.shell(host)
        shell.run(HEAL_NETWORK)
        shell.run(START_ENGINE, timeout=90)

    def _check_host(self, host: str) -> None:
        if host not in self._shells:
            raise UsageError(f"the cluster has no host {host!r}",
                             hint=f"its hosts: {', '.join(self.hosts())}")

    def resources(self) -> tuple[int, int, int] | None:
        """Every host's CPUs and memory, summed (the ARP limit is each host's own)."""
        def info(host: str) -> tuple[int, int]:
            words = self.shell(host).run("docker info --format '{{.NCPU}} {{.MemTotal}}'"
                                         ).output.split()
            return int(words[0]), int(words[1])

        results = self._on_hosts(info).values()
        if any(isinstance(r, DistlabError) for r in results):
            return None
        return (sum(r[0] for r in results), sum(r[1] for r in results), 0)


# -- host faults, run on the host over SSH ------------------------------------------------------

HOST_CHAIN = "DISTLAB-HOST"  # the partition's iptables chain on a host
QDISC = "d15:"  # the handle of distlab's shaping qdisc on a host's interface (a slow link)
ENGINE_RUNNING = "docker info >/dev/null 2>&1"
START_ENGINE = (
    f"{ENGINE_RUNNING} && exit 0; "
    "if [ -d /run/systemd/system ]; then systemctl start docker; "
    "else nohup dockerd >>/var/log/dockerd.log 2>&1 </dev/null & fi; "
    f"for i in $(seq 120); do {ENGINE_RUNNING} && exit 0; sleep 0.5; done; "
    "echo 'dockerd did not start (see /var/log/dockerd.log)'; exit 1")
# SIGTERM: the engine stops every container (each within its grace period) and exits, as
# at a shutdown; the swarm's managers see the node go down and reschedule its tasks.
STOP_ENGINE = (
    "if [ -d /run/systemd/system ]; then systemctl stop docker.socket docker; exit $?; fi; "
    "pkill -TERM -x dockerd || exit 0; "
    "for i in $(seq 120); do pgrep -x dockerd >/dev/null || exit 0; sleep 0.5; done; "
    "echo 'dockerd did not stop within 60 s'; exit 1")


def interface_to(address: str) -> str:
    """Shell: the interface a host sends to `address` on, into $dev."""
    return (f"dev=$(ip route get {shlex.quote(address)} | "
            "sed -n 's/.* dev \\([^ ]*\\).*/\\1/p' | head -1)")


def partition_commands(others: Sequence[str]) -> str:
    drops = "; ".join(f"iptables -A {HOST_CHAIN} -s {a} -j DROP; "
                      f"iptables -A {HOST_CHAIN} -d {a} -j DROP" for a in others)
    return (f"iptables -N {HOST_CHAIN} 2>/dev/null; iptables -F {HOST_CHAIN}; {drops}; "
            f"for c in INPUT OUTPUT; do iptables -C $c -j {HOST_CHAIN} 2>/dev/null || "
            f"iptables -I $c -j {HOST_CHAIN}; done")


def slow_link_commands(other: str, rate: str) -> str:
    """htb only sorts what goes to `other` into a class of its own; tbf under it shapes."""
    return (f"{interface_to(other)}; "
            f"tc qdisc show dev $dev | grep -q 'htb {QDISC}' || "
            f"{{ tc qdisc add dev $dev root handle {QDISC} htb default 1 r2q 100000 && "
            f"tc class add dev $dev parent {QDISC} classid {QDISC}1 htb rate 10gbit; }}; "
            f"n=$(( $(tc class show dev $dev | grep -c 'htb {QDISC}') + 1 )); "
            f"tc class add dev $dev parent {QDISC} classid {QDISC}$n htb rate 10gbit && "
            f"tc qdisc add dev $dev parent {QDISC}$n tbf rate {rate} burst 32kbit "
            f"latency 400ms && tc filter add dev $dev parent {QDISC} protocol ip prio 1 u32 "
            f"match ip dst {other}/32 flowid {QDISC}$n")


HEAL_NETWORK = (
    f"for c in INPUT OUTPUT; do while iptables -D $c -j {HOST_CHAIN} 2>/dev/null; do :; "
    f"done; done; iptables -F {HOST_CHAIN} 2>/dev/null; iptables -X {HOST_CHAIN} 2>/dev/null; "
    f"for dev in $(ls /sys/class/net); do tc qdisc show dev $dev | grep -q 'htb {QDISC}' && "
    "tc qdisc del dev $dev root; done; true")


def machine_name(container: str) -> str:
    """`app-2` for task container `distlab_app.2.<task id>`."""
    service, _, rest = container.partition(".")
    slot = rest.partition(".")[0]
    return f"{service.removeprefix(STACK + '_')}-{slot}"


def task_of(raw: dict, host: str, host_address: str) -> Task | None:
    """A machine from one `docker inspect` entry of a task container (None: not a task)."""
    labels = raw.get("Config", {}).get("Labels") or {}
    task = labels.get(TASK_NAME)
    if not task:
        return None
    state = raw.get("State") or {}
    status = "paused" if state.get("Paused") else state.get("Status", "unknown")
    health = ((state.get("Health") or {}).get("Status")) or "-"
    networks = (raw.get("NetworkSettings") or {}).get("Networks") or {}
    addresses = tuple(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))
    ports = (raw.get("NetworkSettings") or {}).get("Ports") or {}
    bound = next((b.get("HostPort") for b in ports.get(f"{GRPC_PORT}/tcp") or ()
                  if b.get("HostPort")), None)
    endpoint = f"{host_address}:{bound}" if bound and status == "running" else None
    service = labels.get(SERVICE_NAME, "").removeprefix(STACK + "_")
    info = MachineInfo(
        name=machine_name(task), container=task, lab=labels.get(LAB_LABEL, ""),
        role=labels.get(ROLE_LABEL, ""), service=service, state=status, health=health,
        addresses=addresses, grpc_endpoint=endpoint, host=host,
        contract=labels.get(CONTRACT_LABEL) != "none",
        ephemeral=labels.get(EPHEMERAL_LABEL) == "true")
    return Task(host, info, raw.get("Created", ""))


def current_tasks(tasks: Sequence[Task]) -> list[Task]:
    """One task per machine: the running one, else the newest (Swarm keeps a few old
    tasks of each slot, exited, as its history)."""
    best: dict[str, Task] = {}
    for task in tasks:
        held = best.get(task.info.name)
        if held is None or _rank(task) > _rank(held):
            best[task.info.name] = task
    return list(best.values())


def _rank(task: Task) -> tuple:
    return (task.info.state in ("running", "paused"), task.created)


def _machine_order(info: MachineInfo) -> tuple:
    service, _, index = info.name.rpartition("-")
    return (info.lab == "common", service, int(index) if index.isdigit() else 0, info.name)


def placement_of(texts: Sequence[str], services: Sequence[str], hosts: Sequence[str]
                 ) -> dict[str, str]:
    """`--place data=host-2` options as {service: host}, each name checked."""
    placed: dict[str, str] = {}
    for text in texts:
        service, sep, host = text.partition("=")
        if not sep or not service or not host:
            raise UsageError(f"--place {text!r}: write SERVICE=HOST", hint="e.g. data=host-2")
        if service not in services:
            raise UsageError(f"--place {text!r}: the lab has no service {service!r}",
                             hint=f"its services: {', '.join(services)}")
        if host not in hosts:
            raise UsageError(f"--place {text!r}: the cluster has no host {host!r}",
                             hint=f"its hosts: {', '.join(hosts)}")
        placed[service] = host
    return placed

"""Compose project -> Docker Swarm stack file: the one place a lab is adapted to Swarm.

Who calls it: the Swarm runtime, with the JSON `docker compose --profile LAB config
--format json` prints for compose.yaml (the same file every lab uses); it writes
`Stack.file` as YAML and runs `docker stack deploy -c FILE --with-registry-auth --prune
distlab` on a manager. Pure: no I/O, no Docker, the project passed in is not changed.
Short Compose syntax (compose.yaml read with PyYAML) is taken as well as the long one.

Target: the Docker CLI and engine 20.10 (Debian's docker.io 20.10.24): stack files of
format 3.9, whose JSON schema refuses any key it does not know (docker/cli
cli/compose/schema/data/config_schema_v3.9.json), ignores with a warning the keys in
`types.UnsupportedProperties` and `DeprecatedProperties`, fails on `ForbiddenProperties`
(cli/compose/types/types.go), and converts the rest in cli/compose/convert/. 20.10
added capabilities (docker/cli#2687, moby#41249), ulimits (docker/cli#2712) and
`deploy.resources.limits.pids` (docker/cli#2503) to stacks (CHANGELOG 20.10.0), so
`cap_add: [NET_ADMIN]` reaches the containers and network faults keep working; every
Swarm node must run engine 20.10+ (API 1.41) for it. The cluster has no IPVS: no VIPs,
no routing mesh.

What is adapted, and why (`Stack.notes` says which services each one touched):

- services of every profile -> only the `services` given. Swarm knows no profiles
  (`profiles` fails the 3.9 schema).
- `name` (the project) -> left out: not in the 3.9 schema; the stack's name is the
  argument of `docker stack deploy`.
- `image: distlab/node:dev` -> `<registry>/distlab/node:dev`: every host pulls from the
  cluster registry (a registry host already in the name is replaced).
- `deploy.replicas` -> `scale[service]`, else compose's `deploy.replicas`, else 1.
- `deploy.endpoint_mode` -> `dnsrr` on every service: VIPs need IPVS. The service name
  still resolves to every task, as under Compose.
- `restart` -> `deploy.restart_policy`: `always`/`unless-stopped` -> any, `on-failure[:N]`
  -> on-failure (max_attempts N), `no` -> none, none given -> any (Swarm's default,
  written out). Stack deploy ignores `restart`; `any` lets Swarm replace a task whose
  host is lost. A killed or stopped machine comes back as a NEW container in its slot,
  not as the stopped one restarted: the Swarm runtime's process faults must expect it.
- `mem_limit`, `cpus`, `pids_limit`, `mem_reservation` -> `deploy.resources`: stack
  deploy refuses `mem_limit` (a forbidden property) and the 3.9 schema the others;
  `cpus` and `memory` are written as strings, as 3.9 wants.
- placement -> `preferences: [spread: node.labels.distlab.host]`; a service pinned with
  `placement={"data": "host-2"}` gets `constraints: [node.labels.distlab.host ==
  host-2]` instead.
- `ports` -> `{target, published?, protocol, mode: host}`: no routing mesh without IPVS,
  and dnsrr refuses ingress ports. `host_ip` (127.0.0.1) cannot be said in Swarm: the
  port opens on every interface of the task's host (weakened; firewall the hosts). A
  port without a fixed published port stays without one: the engine picks a free
  ephemeral host port per task, so replicas sharing a host never collide, which is what
  `127.0.0.1::50051` does under Compose; the runtime reads it from the task's container.
  A fixed published port allows one task of the service per host.
- `labels` -> `labels` (containers) AND `deploy.labels` (the service), both plus
  `distlab.machine-service=<service>`: `distlab clean` and the runtime find containers
  by label, and service + task slot give the machine name (`app-2`).
- (nothing) -> `hostname: <service>-{{.Task.Slot}}` and env `NODE_NAME` the same (a
  service's own hostname or NODE_NAME wins): under Compose a node learns its name from
  Docker DNS (`distlab-kv-2`); Swarm names containers `<stack>_<service>.<slot>.<id>`.
- named volume of a replicated service -> one volume per task, top-level
  `name: <volume name>_<service>-{{.Task.Slot}}`: stack deploy passes a top-level
  volume's `name` as the mount source (cli/compose/convert/volume.go) and the engine
  expands Go templates in mount sources (swarmkit template/expand.go; moby#30770), so
  replicas never share a volume. Templates in the service's own `volumes:` entry are
  refused ("undefined volume", moby#29217). Volumes are per host: a task moved to
  another host starts empty. Services that share a volume to hand each other files (a
  torrent, job inputs) no longer do (weakened). Global services and external volumes
  keep the one name.
- bind mount of a path inside the project (Prometheus's `./prometheus` configuration)
  -> the copy the Swarm runtime puts at the same relative path under
  /etc/distlab/stack/files on every host (`copies`, from `project_files`), so the
  service runs wherever Swarm places it. Files changed here reach the hosts at the next
  `distlab up`, not while the lab runs.
- any other bind mount -> kept; its path must exist on whichever host runs the task
  (weakened).
- `tmpfs` (the service key) -> `volumes: [{type: tmpfs, target, tmpfs: {size}}]`: stack
  deploy ignores the key; a 3.9 tmpfs mount takes only a size, so `uid`, `gid`, `mode`
  ... are lost (weakened).
- `secrets` (file) -> kept, `target` relative to /run/secrets, `mode: 0444` unless
  given: Swarm mounts secrets owned by uid/gid 0; 0444 lets a node's own user (10001)
  read its credential, as the 0444 file does under Compose.
- `networks` -> `driver: overlay`, `attachable: true` (host-side tools can join);
  `internal`, `labels`, `name` kept; bridge `driver_opts` and static addresses dropped.
- `healthcheck` -> a liveness probe: no more often than every 10 s, a 10 s timeout at
  least, and at least 3 failures in a row (so at least 30 s, the failure window of
  Kubernetes' default liveness probe) before a task is replaced. Swarm replaces a task
  whose check fails `retries` times in a row; Compose only marks it unhealthy. With
  compose.yaml's checks (every 3 s, 3 s timeout), 64 Chord peers on three test hosts
  sharing two cores were killed for being slow (most checks took longer than 3 s) and
  their replacements slowed the rest: 23 of 64 were being replaced right after the lab
  was first healthy, and the ring never settled. A machine shows `healthy` and
  `unhealthy` that much later than under Compose. `start_interval` is not in 3.9.
- `cap_add`, `cap_drop`, `read_only`, `init`, `stop_grace_period`, `sysctls`,
  `extra_hosts`, `ulimits`, `user`, `command`, `entrypoint`, `environment` ... -> kept:
  20.10 honours them.
- `depends_on`, `container_name`, `expose`, `build`, `pull_policy`, `env_file`, `links`
  ... -> left out: ignored or refused by stack deploy. Swarm starts every service at
  once, so nodes wait for their peers themselves.
- `security_opt`, `shm_size`, `cgroup_parent`, `oom_score_adj`, `group_add` ... -> left
  out (weakened): stack deploy 20.10 ignores them, so `no-new-privileges` is NOT applied.
- `network_mode`, `pid`, `ipc`, `privileged: true`, `devices`, `userns_mode`,
  `volumes_from` -> refused with `UnsupportedOnSwarm` naming the service and the key:
  Swarm cannot run such a service as its lab means it.
- any other key -> left out, with a note: stack deploy is never passed a key this list
  does not cover.

`Stack.weakened` lists, per service, what it loses that Compose gave it (the runtime
warns); `Stack.lost_capabilities` is empty on 20.10. Deploying also needs: the node
label `distlab.host` on every Swarm node, the registry in every engine's
`insecure-registries` when it is plain HTTP, and no Compose lab's bridge network of the
same name (`distlab_lab`) on the manager.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from distlab.errors import UsageError

STACK_VERSION = "3.9"
HOST_LABEL = "distlab.host"  # the node label the Swarm runtime gives each host: host-1 ...
MACHINE_SERVICE_LABEL = "distlab.machine-service"
SECRETS_DIR = "/run/secrets/"
SECRET_MODE = 0o444
TASK_SLOT = "{{.Task.Slot}}"
NODE_HOSTNAME = "{{.Node.Hostname}}"  # a global service has one task per host and no slot

# Keys 20.10's stack deploy honours as Compose means them: copied unchanged.
_KEPT = frozenset({
    "cap_add", "cap_drop", "command", "dns", "dns_search", "entrypoint", "init", "isolation",
    "logging", "read_only", "stdin_open", "stop_grace_period", "stop_signal", "sysctls",
    "tty", "ulimits", "user", "working_dir",
})
# Keys this module turns into their stack form (each has its own function below).
_ADAPTED = frozenset({
    "image", "deploy", "ports", "volumes", "tmpfs", "networks", "secrets", "restart",
    "labels", "environment", "healthcheck", "hostname", "extra_hosts",
    "mem_limit", "mem_reservation", "cpus", "pids_limit",
})
# Left out: stack deploy ignores or refuses them, and nothing a lab relies on is lost.
_IGNORED = {
    "depends_on": "Swarm starts every service at once, in no order: nodes wait for their "
                  "peers themselves",
    "profiles": "Swarm knows no profiles: the stack holds only the lab's services",
    "container_name": "Swarm names containers <stack>_<service>.<slot>.<task id>",
    "expose": "services on one network reach each other on any port",
    "build": "images come built from the cluster registry",
    "pull_policy": "every host pulls from the cluster registry",
    "env_file": "Compose already merged it into `environment`",
    "scale": "deploy.replicas is set instead",
    "links": "service names resolve on the overlay network",
    "external_links": "service names resolve on the overlay network",
    "platform": "not in the 3.9 format",
    "domainname": "not applied by stack deploy",
}
# Left out, and the service loses something Compose gave it (reported in `weakened`).
_LOST = {
    "security_opt": "stack deploy 20.10 does not apply security_opt "
                    "(no-new-privileges, seccomp, apparmor)",
    "shm_size": "stack deploy does not apply shm_size",
    "cgroup_parent": "stack deploy does not apply cgroup_parent",
    "cgroupns_mode": "stack deploy does not apply cgroupns_mode",
    "mac_address": "stack deploy does not apply mac_address",
    "oom_score_adj": "not in the 3.9 format",
    "oom_kill_disable": "not in the 3.9 format",
    "group_add": "not in the 3.9 format",
    "storage_opt": "not in the 3.9 format",
    "runtime": "not in the 3.9 format",
    "mem_swappiness": "not in the 3.9 format",
    "memswap_limit": "stack deploy refuses it (forbidden property)",
    "cpu_shares": "stack deploy refuses it (forbidden property)",
    "cpu_quota": "stack deploy refuses it (forbidden property)",
    "cpu_period": "not in the 3.9 format",
    "cpuset": "stack deploy refuses it (forbidden property)",
    "blkio_config": "not in the 3.9 format",
    "device_cgroup_rules": "not in the 3.9 format",
}
# Refused: a service that needs one of these cannot run on Swarm as its lab means it.
_REFUSED = {
    "network_mode": "a Swarm task always gets its own network namespace on the stack's "
                    "networks",
    "pid": "a Swarm task cannot share a PID namespace",
    "ipc": "a Swarm task cannot share an IPC namespace",
    "privileged": "Swarm services cannot be privileged",
    "devices": "Swarm services cannot be given devices",
    "userns_mode": "Swarm services cannot choose their user namespace",
    "volumes_from": "Swarm has no volumes_from (stack deploy refuses it)",
    "extends": "stack deploy refuses extends (render the project with Compose first)",
}
_HEALTHCHECK_KEYS = ("test", "interval", "timeout", "retries", "start_period", "disable")
# A health check as a liveness probe on Swarm (see above): no more often, no less patient.
LIVENESS_INTERVAL_SECONDS = 10.0
LIVENESS_TIMEOUT_SECONDS = 10.0
LIVENESS_RETRIES = 3
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_UPDATE_KEYS = ("parallelism", "delay", "failure_action", "monitor", "max_failure_ratio",
                "order")
_RESTART_KEYS = ("condition", "delay", "max_attempts", "window")
_PROPAGATIONS = frozenset({"shared", "slave", "private", "rshared", "rslave", "rprivate"})
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?$", re.IGNORECASE)


class UnsupportedOnSwarm(UsageError):
    """A lab's service uses something Swarm cannot run; `service` and `key` say what."""

    hint = "run this lab with the Compose runtime, or change the service in compose.yaml"

    def __init__(self, service: str, key: str, reason: str) -> None:
        super().__init__(f"service {service!r} cannot run on Swarm: {key}: {reason}")
        self.service = service
        self.key = key


@dataclass(frozen=True)
class Stack:
    """A stack file (`yaml.safe_dump(stack.file)`) and what was adapted on the way."""

    file: dict
    # One line per kind of adaptation, naming the services it touched.
    notes: list[str]
    # Per service: what it has under Compose and loses on Swarm (the runtime warns).
    weakened: dict[str, list[str]] = field(default_factory=dict)

    @property
    def lost_capabilities(self) -> frozenset[str]:
        """Capabilities a service asks for that its containers will not get: none on
        20.10, which passes cap_add/cap_drop to Swarm (so NET_ADMIN network faults work)."""
        return frozenset()


class _Notes:
    """Notes kept once per kind, each naming the services it concerns."""

    def __init__(self) -> None:
        self._services: dict[str, list[str]] = {}
        self.weakened: dict[str, list[str]] = {}

    def add(self, text: str, service: str | None = None) -> None:
        services = self._services.setdefault(text, [])
        if service is not None and service not in services:
            services.append(service)

    def weaken(self, service: str, loss: str, text: str | None = None) -> None:
        losses = self.weakened.setdefault(service, [])
        if loss not in losses:
            losses.append(loss)
        self.add(text or loss, service)

    def lines(self) -> list[str]:
        return [f"{text} ({', '.join(services)})" if services else text
                for text, services in self._services.items()]


def cluster_image(image: str, registry: str) -> str:
    """`distlab/node:dev` -> `10.0.0.2:5000/distlab/node:dev`: the image as every host
    pulls it from the cluster registry (a registry host already in the name is replaced)."""
    first, slash, rest = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        image = rest
    return f"{registry}/{image}"


def to_stack(project: Mapping, *, services: Sequence[str], scale: Mapping[str, int],
             registry: str, placement: Mapping[str, str] | None = None,
             copies: Mapping[str, str] | None = None) -> Stack:
    """The stack file for `services` of the rendered Compose `project` at `scale`, their
    images from `registry` ("10.0.0.2:5000"), spread over hosts except the services
    `placement` pins to one host ({"data": "host-2"}); a bind mount whose source is in
    `copies` mounts the copy every host has instead ({local path: path on the hosts})."""
    placement = placement or {}
    copies = copies or {}
    registry = _checked_registry(registry)
    defined = project.get("services") or {}
    _check_names(services, defined, scale, placement)
    project_name = str(project.get("name") or "distlab")
    notes = _Notes()
    if "name" in project:
        notes.add("name: the project name is not in the 3.9 format; the stack is named by "
                  "`docker stack deploy`")
    usage = _volume_usage(services, defined)
    out_services: dict[str, dict] = {}
    used_networks: dict[str, str] = {}  # network -> first service on it
    used_secrets: dict[str, str] = {}
    volumes_out: dict[str, dict] = {}
    for name in services:
        spec = defined[name]
        out_services[name] = _service(name, spec, project, project_name, scale, registry,
                                      placement.get(name), usage, copies, volumes_out, notes)
        for network in out_services[name].get("networks", {}):
            used_networks.setdefault(network, name)
        for secret in out_services[name].get("secrets", []):
            used_secrets.setdefault(secret["source"], name)
    file: dict = {"version": STACK_VERSION, "services": out_services}
    networks = {key: _network(key, (project.get("networks") or {}).get(key) or {},
                              first, project_name, notes)
                for key, first in used_networks.items()}
    if networks:
        file["networks"] = networks
    if volumes_out:
        file["volumes"] = volumes_out
    secrets = {key: _secret(key, (project.get("secrets") or {}).get(key), first, notes)
               for key, first in used_secrets.items()}
    if secrets:
        file["secrets"] = secrets
    return Stack(_plain(file), notes.lines(), notes.weakened)


def _checked_registry(registry: str) -> str:
    registry = registry.strip().rstrip("/")
    if not registry or "://" in registry or " " in registry:
        raise UsageError(f"registry {registry!r} is not HOST[:PORT]",
                         hint="for example 10.0.0.2:5000")
    return registry


def _check_names(services: Sequence[str], defined: Mapping, scale: Mapping[str, int],
                 placement: Mapping[str, str]) -> None:
    missing = [s for s in services if s not in defined]
    if missing:
        raise UsageError(f"the project has no service {', '.join(map(repr, missing))}",
                         hint="render compose.yaml with the lab's profile")
    for what, names in (("scale", scale), ("placement", placement)):
        strangers = [s for s in names if s not in services]
        if strangers:
            raise UsageError(f"{what} names {', '.join(map(repr, strangers))}, not a service "
                             f"of this lab", hint=f"its services: {', '.join(services)}")
    for service, count in scale.items():
        if int(count) < 0:
            raise UsageError(f"scale {service}={count}: a count is 0 or more")
    for service, host in placement.items():
        if not _HOST_NAME.match(str(host)):
            raise UsageError(f"placement {service}={host!r}: not a host name",
                             hint="hosts are named by their node label distlab.host: host-1 ...")


def _service(name: str, spec: Mapping, project: Mapping, project_name: str,
             scale: Mapping[str, int], registry: str, host: str | None,
             usage: Mapping[str, list[str]], copies: Mapping[str, str], volumes_out: dict,
             notes: _Notes) -> dict:
    for key, value in spec.items():
        if key in _REFUSED and value not in (None, False, [], {}, ""):
            raise UnsupportedOnSwarm(name, key, _REFUSED[key])
    out: dict = {}
    if "image" not in spec:
        raise UnsupportedOnSwarm(name, "image", "a stack service needs an image (no build)")
    out["image"] = cluster_image(str(spec["image"]), registry)
    for key in ("entrypoint", "command"):
        if spec.get(key) is not None:
            out[key] = spec[key]
    deploy = spec.get("deploy") or {}
    mode = deploy.get("mode") or "replicated"
    if mode not in ("replicated", "global"):
        raise UnsupportedOnSwarm(name, "deploy.mode", f"{mode!r}: stack deploy 20.10 takes "
                                 "replicated or global")
    slot = TASK_SLOT if mode == "replicated" else NODE_HOSTNAME
    if spec.get("hostname"):
        out["hostname"] = spec["hostname"]
    else:
        out["hostname"] = f"{name}-{slot}"
    environment = _mapping(spec.get("environment"), keep_none=True)
    if "NODE_NAME" not in environment:
        environment["NODE_NAME"] = f"{name}-{slot}"
        notes.add("hostname and NODE_NAME: <service>-{{.Task.Slot}} (the engine fills in the "
                  "slot), so a machine knows its name as under Compose")
    out["environment"] = environment
    labels = _mapping(spec.get("labels"))
    labels[MACHINE_SERVICE_LABEL] = name
    out["labels"] = labels
    for key in sorted(_KEPT & spec.keys()):
        if spec[key] is not None:
            out[key] = spec[key]
    if spec.get("extra_hosts"):
        out["extra_hosts"] = _extra_hosts(spec["extra_hosts"])
    if spec.get("healthcheck"):
        out["healthcheck"] = _healthcheck(name, spec["healthcheck"], notes)
    replicas = None
    if mode == "replicated":
        replicas = int(scale.get(name, deploy.get("replicas", 1)))
    elif name in scale:
        raise UsageError(f"scale {name}: a global service runs one task per host")
    ports = [_port(name, entry, notes) for entry in spec.get("ports") or ()]
    if ports:
        out["ports"] = _unique(ports)
        if (replicas or 0) > 1 and any("published" in p for p in ports):
            notes.add("ports: a fixed published port lets only one task of the service run "
                      "on each host", name)
    mounts = [_mount(name, entry, mode, project, project_name, usage, copies, volumes_out,
                     notes)
              for entry in spec.get("volumes") or ()]
    mounts += [_tmpfs(name, entry, notes) for entry in _as_list(spec.get("tmpfs"))]
    if mounts:
        out["volumes"] = _unique(mounts)
    out["networks"] = _service_networks(name, spec.get("networks"), notes)
    if spec.get("secrets"):
        out["secrets"] = [_service_secret(entry, notes, name) for entry in spec["secrets"]]
    out["deploy"] = _deploy(name, spec, deploy, mode, replicas, labels, host, notes)
    for key in spec:
        if key in _IGNORED:
            notes.add(f"{key}: left out, {_IGNORED[key]}", name)
        elif key in _LOST:
            notes.weaken(name, f"{key} not applied", f"{key}: left out, {_LOST[key]}")
        elif not (key in _KEPT or key in _ADAPTED or key in _REFUSED or key.startswith("x-")):
            notes.add(f"{key}: unknown to the stack adapter, left out", name)
    return out


def _deploy(name: str, spec: Mapping, deploy: Mapping, mode: str, replicas: int | None,
            labels: Mapping[str, str], host: str | None, notes: _Notes) -> dict:
    out: dict = {}
    if mode == "global":
        out["mode"] = "global"
    else:
        out["replicas"] = replicas
    if deploy.get("endpoint_mode") not in (None, "dnsrr"):
        notes.add("deploy.endpoint_mode: dnsrr instead of a VIP (no IPVS here)", name)
    out["endpoint_mode"] = "dnsrr"
    out["labels"] = {**_mapping(deploy.get("labels")), **labels}
    resources = _resources(name, spec, deploy.get("resources") or {}, notes)
    if resources:
        out["resources"] = resources
    out["restart_policy"] = _restart_policy(name, spec.get("restart"),
                                            deploy.get("restart_policy"), notes)
    out["placement"] = _placement(deploy.get("placement") or {}, host)
    for key in ("update_config", "rollback_config"):
        if deploy.get(key):
            out[key] = {k: v for k, v in deploy[key].items() if k in _UPDATE_KEYS}
    for key in deploy:
        if key not in ("mode", "replicas", "endpoint_mode", "labels", "resources",
                       "restart_policy", "placement", "update_config", "rollback_config"):
            notes.add(f"deploy.{key}: unknown to the stack adapter, left out", name)
    return out


def _resources(name: str, spec: Mapping, resources: Mapping, notes: _Notes) -> dict:
    limits = dict(resources.get("limits") or {})
    reservations = dict(resources.get("reservations") or {})
    for key, into, target in (("mem_limit", limits, "memory"), ("cpus", limits, "cpus"),
                              ("pids_limit", limits, "pids"),
                              ("mem_reservation", reservations, "memory")):
        if spec.get(key) is not None:
            into.setdefault(target, spec[key])
            notes.add(f"{key}: moved to deploy.resources", name)
    out = {}
    kept_limits = {"cpus": _cpus, "memory": str, "pids": int}
    kept_reservations = {"cpus": _cpus, "memory": str}
    for label, values, kept in (("limits", limits, kept_limits),
                                ("reservations", reservations, kept_reservations)):
        converted = {k: kept[k](v) for k, v in values.items() if k in kept and v is not None}
        for key in values.keys() - kept.keys():
            notes.add(f"deploy.resources.{label}.{key}: not in the 3.9 format, left out", name)
        if converted:
            out[label] = converted
    return out


def _cpus(value) -> str:
    if isinstance(value, str):
        return value
    return f"{float(value):g}"


def _restart_policy(name: str, restart: str | None, policy: Mapping | None,
                    notes: _Notes) -> dict:
    if policy:
        return {k: v for k, v in policy.items() if k in _RESTART_KEYS}
    if restart is None:
        notes.add("restart: none given, so deploy.restart_policy condition any (Swarm's own "
                  "default): a killed or stopped machine is replaced by a new container in "
                  "its slot, on another host if its own is lost", name)
        return {"condition": "any"}
    notes.add("restart: became deploy.restart_policy (stack deploy ignores restart)", name)
    kind, _, attempts = str(restart).partition(":")
    if kind in ("always", "unless-stopped"):
        return {"condition": "any"}
    if kind == "on-failure":
        return {"condition": "on-failure", **({"max_attempts": int(attempts)} if attempts
                                              else {})}
    if kind == "no":
        return {"condition": "none"}
    raise UnsupportedOnSwarm(name, "restart", f"{restart!r} is not a restart policy")


def _placement(placement: Mapping, host: str | None) -> dict:
    constraints = list(placement.get("constraints") or [])
    out: dict = {}
    if host is not None:
        constraints.append(f"node.labels.{HOST_LABEL} == {host}")
    if constraints:
        out["constraints"] = constraints
    if host is None:
        out["preferences"] = (list(placement.get("preferences") or [])
                              or [{"spread": f"node.labels.{HOST_LABEL}"}])
    if placement.get("max_replicas_per_node"):
        out["max_replicas_per_node"] = placement["max_replicas_per_node"]
    return out


def _port(name: str, entry, notes: _Notes) -> dict:
    if isinstance(entry, Mapping):
        target, published = entry.get("target"), entry.get("published")
        protocol, host_ip = entry.get("protocol") or "tcp", entry.get("host_ip") or ""
        if entry.get("mode") == "ingress":
            notes.add("ports: ingress mode became host mode (no routing mesh without IPVS): "
                      "a port is open only on the host running the task", name)
    else:
        text, _, protocol = str(entry).partition("/")
        protocol = protocol or "tcp"
        parts = text.rsplit(":", 2)
        target = parts[-1]
        published = parts[-2] if len(parts) > 1 else None
        host_ip = parts[0] if len(parts) == 3 else ""
    if any("-" in str(p) for p in (target, published) if p is not None):
        raise UnsupportedOnSwarm(name, "ports", f"port range in {entry!r}: list each port")
    out: dict = {"target": int(target)}
    if published not in (None, "", 0, "0"):
        out["published"] = int(published)
    out["protocol"] = protocol
    out["mode"] = "host"
    if host_ip and host_ip not in ("0.0.0.0", "::"):
        notes.weaken(name, f"published ports bind every interface, not only {host_ip}",
                     f"ports: host IP {host_ip} cannot be expressed in Swarm, the port opens on "
                     "every interface of the task's host (firewall the hosts)")
    return out


def _mount(name: str, entry, mode: str, project: Mapping, project_name: str,
           usage: Mapping[str, list[str]], copies: Mapping[str, str], volumes_out: dict,
           notes: _Notes) -> dict:
    mount = _parse_mount(entry)
    kind = mount.get("type", "volume")
    for option, settings in (("bind", mount.get("bind")), ("volume", mount.get("volume"))):
        # create_host_path: Compose's own default for a short bind; Swarm never creates one.
        for key in set(settings or {}) - {"propagation", "nocopy", "create_host_path"}:
            notes.add(f"volumes: {option}.{key} is not in the 3.9 format, left out", name)
    if kind == "tmpfs":
        return _tmpfs_mount(name, mount.get("target"), mount.get("tmpfs") or {}, notes)
    out: dict = {"type": kind, "source": mount.get("source"), "target": mount["target"]}
    if mount.get("read_only"):
        out["read_only"] = True
    if kind == "bind":
        propagation = (mount.get("bind") or {}).get("propagation")
        if propagation:
            out["bind"] = {"propagation": propagation}
        if out["source"] in copies:
            notes.add(f"volumes: bind mount {out['source']} -> its copy on every host, "
                      f"{copies[out['source']]}", name)
            out["source"] = copies[out["source"]]
            return out
        notes.weaken(name, f"bind mount {out['source']} must exist on the task's host",
                     "volumes: a bind mount's path must exist on whichever host runs the "
                     "task (pin the service with placement)")
        return out
    if kind != "volume":
        raise UnsupportedOnSwarm(name, "volumes", f"mount type {kind!r}")
    if (mount.get("volume") or {}).get("nocopy"):
        out["volume"] = {"nocopy": True}
    source = out["source"]
    if not source:  # anonymous: a fresh volume per task already
        del out["source"]
        return out
    declared = (project.get("volumes") or {}).get(source) or {}
    if declared.get("external"):  # stack deploy mounts an external volume by its own name
        stack_volume: dict = {"name": declared.get("name") or source, "external": True}
        notes.add("volumes: an external volume must exist on every host a task may run on",
                  name)
    else:
        base = declared.get("name") or f"{project_name}_{source}"
        stack_volume = {"name": base}
        if mode == "replicated":
            key = f"{source}_{name}"
            stack_volume["name"] = f"{base}_{name}-{TASK_SLOT}"
            out["source"] = key
            notes.add("volumes: a named volume became one volume per task "
                      "(<volume>_<service>-<slot>), on the host the task runs on; a task "
                      "moved to another host starts with an empty one", name)
        for item in ("driver", "driver_opts", "labels"):
            if declared.get(item):
                stack_volume[item] = declared[item]
        sharers = usage.get(source, [])
        if len(sharers) > 1 and mode == "replicated":
            notes.weaken(name, f"no longer shares volume {source} with "
                               f"{', '.join(s for s in sharers if s != name)}",
                         f"volumes: {source} is mounted by {', '.join(sharers)}; under "
                         "Compose they share its files, on Swarm each task has its own")
    volumes_out[out["source"]] = stack_volume
    return out


def project_files(project: Mapping, services: Sequence[str], root: str, under: str
                  ) -> dict[str, str]:
    """{bind source: its copy on the hosts} for every bind mount of `services` whose source
    is inside the project directory `root`: `root/prometheus` -> `under/prometheus`."""
    root = root.rstrip("/")
    copies: dict[str, str] = {}
    for name in services:
        for entry in (project.get("services") or {}).get(name, {}).get("volumes") or ():
            mount = _parse_mount(entry)
            source = str(mount.get("source") or "")
            if mount.get("type") == "bind" and source.startswith(root + "/"):
                copies[source] = f"{under.rstrip('/')}/{source[len(root) + 1:]}"
    return copies


def _parse_mount(entry) -> dict:
    if isinstance(entry, Mapping):
        return dict(entry)
    parts = str(entry).split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}
    source, target, options = parts[0], parts[1], (parts[2].split(",") if len(parts) > 2
                                                   else [])
    kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    mount: dict = {"type": kind, "source": source, "target": target,
                   "read_only": "ro" in options}
    propagation = [o for o in options if o in _PROPAGATIONS]
    if propagation:
        mount["bind"] = {"propagation": propagation[0]}
    if "nocopy" in options:
        mount["volume"] = {"nocopy": True}
    return mount


def _tmpfs(name: str, entry: str, notes: _Notes) -> dict:
    target, _, options = str(entry).partition(":")
    settings = dict(option.partition("=")[::2] for option in options.split(",") if option)
    notes.add("tmpfs: became a tmpfs mount (stack deploy ignores the tmpfs key)", name)
    return _tmpfs_mount(name, target, settings, notes)


def _tmpfs_mount(name: str, target: str, settings: Mapping, notes: _Notes) -> dict:
    out: dict = {"type": "tmpfs", "target": target}
    if settings.get("size"):
        out["tmpfs"] = {"size": _bytes(settings["size"])}
    for option in sorted(set(settings) - {"size"}):
        notes.weaken(name, f"tmpfs {target}: {option}={settings[option]} not applied",
                     f"tmpfs: a stack's tmpfs mount takes only a size; {option} is lost")
    return out


def _bytes(value) -> int:
    """Docker's sizes ("16m", "1g", 65536): binary multiples, as `units.RAMInBytes`."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value).strip())
    if not match:
        raise UsageError(f"size {value!r} is not a number with k, m or g")
    number, unit = match.groups()
    power = "kmgtp".index(unit.lower()) + 1 if unit else 0
    return int(float(number) * 1024 ** power)


def _service_networks(name: str, networks, notes: _Notes) -> dict:
    if not networks:
        return {"default": None}
    if not isinstance(networks, Mapping):
        return {str(network): None for network in networks}
    out: dict = {}
    for network, settings in networks.items():
        aliases = (settings or {}).get("aliases")
        out[network] = {"aliases": list(aliases)} if aliases else None
        for key in set(settings or {}) - {"aliases"}:
            if (settings or {}).get(key) is not None:
                notes.add(f"networks.{network}.{key}: left out, Swarm tasks get their "
                          "addresses from the overlay network", name)
    return out


def _network(key: str, declared: Mapping, first: str, project_name: str,
             notes: _Notes) -> dict:
    if declared.get("external"):
        return {"external": True, **({"name": declared["name"]} if declared.get("name")
                                     else {})}
    driver = declared.get("driver") or "bridge"
    if driver not in ("bridge", "overlay"):
        raise UnsupportedOnSwarm(first, f"networks.{key}.driver",
                                 f"{driver!r}: a stack's networks are overlay networks")
    out: dict = {"name": declared.get("name") or f"{project_name}_{key}",
                 "driver": "overlay", "attachable": True}
    if declared.get("internal"):
        out["internal"] = True
    if declared.get("labels"):
        out["labels"] = _mapping(declared["labels"])
    subnets = [{"subnet": c["subnet"]} for c in (declared.get("ipam") or {}).get("config") or ()
               if c.get("subnet")]
    if subnets:
        out["ipam"] = {"config": subnets}
    notes.add("networks: overlay, attachable (host-side tools can join)")
    for item in ("driver_opts", "enable_ipv6"):
        if declared.get(item):
            notes.add(f"networks.{key}.{item}: left out, a bridge setting")
    return out


def _service_secret(entry, notes: _Notes, name: str) -> dict:
    secret = {"source": entry} if isinstance(entry, str) else dict(entry)
    out: dict = {"source": secret["source"]}
    target = secret.get("target")
    if target and target != SECRETS_DIR + secret["source"]:
        out["target"] = target.removeprefix(SECRETS_DIR)
    for key in ("uid", "gid"):
        if secret.get(key) is not None:
            out[key] = str(secret[key])
    out["mode"] = int(secret["mode"]) if secret.get("mode") is not None else SECRET_MODE
    notes.add("secrets: Swarm secrets under /run/secrets, owned by uid 0 and mode 0444 "
              "unless the service says otherwise", name)
    return out


def _secret(key: str, declared: Mapping | None, first: str, notes: _Notes) -> dict:
    if not declared:
        raise UnsupportedOnSwarm(first, f"secrets.{key}", "the secret is not declared")
    if declared.get("external"):
        return {"external": True, **({"name": declared["name"]} if declared.get("name")
                                     else {})}
    if not declared.get("file"):
        raise UnsupportedOnSwarm(first, f"secrets.{key}",
                                 "only file secrets go into a stack (stack deploy reads the "
                                 "file on the manager)")
    out = {"file": declared["file"]}
    if declared.get("name"):
        out["name"] = declared["name"]
    return out


def _healthcheck(name: str, healthcheck: Mapping, notes: _Notes) -> dict:
    for key in set(healthcheck) - set(_HEALTHCHECK_KEYS):
        notes.add(f"healthcheck.{key}: not in the 3.9 format, left out", name)
    out = {k: healthcheck[k] for k in _HEALTHCHECK_KEYS if healthcheck.get(k) is not None}
    if not out.get("test") or out.get("disable"):
        return out
    # The engine's defaults: every 30 s, 30 s timeout, 3 retries.
    interval = max(_seconds(out.get("interval", "30s")), LIVENESS_INTERVAL_SECONDS)
    timeout = max(_seconds(out.get("timeout", "30s")), LIVENESS_TIMEOUT_SECONDS)
    out.update(interval=_duration(interval), timeout=_duration(timeout),
               retries=max(int(out.get("retries", 3)), LIVENESS_RETRIES))
    notes.add(f"healthcheck: every {out['interval']}, {out['timeout']} timeout, replaced after "
              f"{out['retries']} failures: Swarm kills a task whose check fails, so a busy "
              "machine must not fail it", name)
    return out


def _seconds(value) -> float:
    """A Compose duration (`3s`, `1m30s`, `500ms`, or seconds as a number) in seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UsageError(f"healthcheck duration {value!r} is not like 3s or 1m30s")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _extra_hosts(hosts) -> list[str]:
    if isinstance(hosts, Mapping):
        pairs = [(host, address) for host, addresses in hosts.items()
                 for address in (addresses if isinstance(addresses, list) else [addresses])]
        return [f"{host}:{address}" for host, address in pairs]
    return [entry.replace("=", ":", 1) if "=" in entry else entry for entry in hosts]


def _volume_usage(services: Sequence[str], defined: Mapping) -> dict[str, list[str]]:
    """Named volume -> the services (of these) that mount it."""
    usage: dict[str, list[str]] = {}
    for service in services:
        for entry in defined[service].get("volumes") or ():
            mount = _parse_mount(entry)
            if mount.get("type", "volume") == "volume" and mount.get("source"):
                users = usage.setdefault(mount["source"], [])
                if service not in users:
                    users.append(service)
    return usage


def _mapping(value, *, keep_none: bool = False) -> dict:
    """Compose's list-or-dict (labels, environment) as a dict of strings."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        items = value.items()
    else:
        items = ((k, v if sep else None) for k, sep, v in
                 (str(entry).partition("=") for entry in value))
    return {str(k): (None if v is None and keep_none else "" if v is None else str(v))
            for k, v in items}


def _plain(value):
    """A fresh copy sharing no dict or list with the project or with itself, so the file
    dumps without YAML anchors and changing it changes nothing else."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _unique(entries: list[dict]) -> list[dict]:
    out: list[dict] = []
    for entry in entries:
        if entry not in out:
            out.append(entry)
    return out

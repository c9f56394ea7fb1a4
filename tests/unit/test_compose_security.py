"""compose.yaml: every service of every lab keeps the least-privilege rules of docs/security.md.

Reads the configuration `docker compose config --format json` renders for each
profile (what Compose will really run: anchors merged, defaults filled in),
and, so the key rules hold even where no Docker CLI is installed, compose.yaml
itself through PyYAML. A service added for a new lab is checked the moment it
appears in either. The exceptions are listed here, each with its reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
NODE_IMAGE = "distlab/node:dev"  # the default of ${DISTLAB_NODE_IMAGE}
CREDENTIAL_SECRET = "distlab_credential"
CREDENTIAL_PATH = "/run/secrets/distlab_credential"
NO_NEW_PRIVILEGES = "no-new-privileges:true"

#: Capabilities a service may add back after dropping ALL, by kind of service.
#: Node machines: NET_ADMIN, for the network faults the host applies through
#: `docker exec --user root` (iptables, tc). Nothing else needs any.
NODE_CAPS = {"NET_ADMIN"}
#: Services that may run without no-new-privileges, and why: under it a `docker exec
#: --user root` process gets no capability, so network faults in node machines fail. The
#: node image has no setuid/setgid file, so nothing inside can raise its privileges anyway.
WITHOUT_NO_NEW_PRIVILEGES = "node machines (the image of the x-node anchor)"
#: Services whose root filesystem may stay writable, and why. None today.
WRITABLE_ROOT: dict[str, str] = {}
#: Services that run code their operator did not write line by line (a serverless
#: function, a MapReduce job, a real BitTorrent client), and what they run.
#: They must not hold the lab credential or NET_ADMIN, and keep no-new-privileges.
FOREIGN_CODE: dict[str, str] = {
    "aria2": "aria2c, a real BitTorrent client (Debian's package)",
    "libtorrent": "libtorrent-rasterbar, a real BitTorrent client (Debian's package)",
}
#: Services that hold the Docker engine's socket, and why. Nothing else may.
ENGINE_SOCKET: dict[str, str] = {
    "engine-proxy": "the serverless runner's only way to the engine: it passes only what "
                    "nodes/serverless/enginepolicy.py allows, on a network only the runner "
                    "shares; it adds no capability and keeps no-new-privileges",
}
# An environment variable that looks like it carries a secret itself.
_SECRET_NAME = re.compile(r"CREDENTIAL|SECRET|TOKEN|PASSWORD|PASSWD|API_?KEY", re.IGNORECASE)


def compose_cli() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return done.returncode == 0


NO_CLI = "the docker CLI with its compose plugin is not installed (scripts/setup-host.sh)"
needs_cli = pytest.mark.skipif(not compose_cli(), reason=NO_CLI)


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def profiles() -> list[str]:
    found = {profile for service in raw_compose()["services"].values()
             for profile in service.get("profiles", ())}
    return ["", *sorted(found)]  # "": what runs with no profile (Prometheus)


@cache
def rendered(profile: str) -> dict:
    argv = ["docker", "compose", "-f", str(COMPOSE_FILE), "--project-directory", str(REPO)]
    if profile:
        argv += ["--profile", profile]
    # The defaults in compose.yaml, not whatever images this shell happens to choose.
    env = {key: value for key, value in os.environ.items() if not key.startswith("DISTLAB_")}
    done = subprocess.run([*argv, "config", "--format", "json"], capture_output=True,
                          text=True, timeout=60, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def rendered_services() -> list[tuple[str, str]]:
    if not compose_cli():
        return []
    return [(profile, name) for profile in profiles() for name in rendered(profile)["services"]]


def is_node(service: dict) -> bool:
    return service.get("image") == NODE_IMAGE or "DISTLAB_NODE_IMAGE" in service.get("image", "")


def check_service(name: str, service: dict) -> None:
    """The rules every service keeps, on a rendered service or one read from compose.yaml."""
    foreign = name in FOREIGN_CODE
    node = is_node(service) and not foreign
    assert service.get("cap_drop") == ["ALL"], f"{name}: cap_drop must be [ALL]"
    allowed = NODE_CAPS if node else set()
    extra = set(service.get("cap_add") or ()) - allowed
    assert not extra, f"{name}: capabilities {sorted(extra)} beyond {sorted(allowed) or 'none'}"
    if not node:
        assert NO_NEW_PRIVILEGES in (service.get("security_opt") or ()), (
            f"{name}: security_opt must hold {NO_NEW_PRIVILEGES} "
            f"(only {WITHOUT_NO_NEW_PRIVILEGES} may go without)")
    if name not in WRITABLE_ROOT:
        assert service.get("read_only") is True, f"{name}: read_only root filesystem"
    assert not service.get("privileged"), f"{name}: privileged"
    for shared in ("pid", "ipc", "network_mode", "userns_mode", "cgroup"):
        assert service.get(shared) != "host", f"{name}: {shared}: host"
    assert not any("unconfined" in opt for opt in service.get("security_opt") or ()), name
    limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    for limit in ("memory", "cpus", "pids"):
        assert limits.get(limit), f"{name}: deploy.resources.limits.{limit} missing"
    mounts = " ".join(json.dumps(volume) for volume in service.get("volumes") or ())
    if name in ENGINE_SOCKET:
        assert not service.get("cap_add"), f"{name}: holds the socket, so adds no capability"
        assert NO_NEW_PRIVILEGES in (service.get("security_opt") or ()), name
    else:
        assert "docker.sock" not in mounts, f"{name}: mounts the Docker socket"
    argv = " ".join(map(str, (service.get("command") or []) + (service.get("entrypoint") or [])))
    assert "--web.enable-lifecycle" not in argv, f"{name}: --web.enable-lifecycle"
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    for key, value in environment.items():
        if _SECRET_NAME.search(key):
            assert key.endswith("__FILE") and str(value).startswith("/run/secrets/"), (
                f"{name}: {key} looks like a secret in an environment variable "
                f"(docker inspect shows those); hand it over as a secret file")
    secrets = {secret if isinstance(secret, str) else secret.get("source")
               for secret in service.get("secrets") or ()}
    if node:
        assert CREDENTIAL_SECRET in secrets, f"{name}: node machines get {CREDENTIAL_SECRET}"
    else:
        assert CREDENTIAL_SECRET not in secrets, (
            f"{name}: only node machines running distlab's own code hold the credential")
    if "grafana" in name:
        assert "GF_SECURITY_ADMIN_PASSWORD" not in environment, (
            f"{name}: admin password in the environment")
        password_file = environment.get("GF_SECURITY_ADMIN_PASSWORD__FILE", "")
        assert password_file.startswith("/run/secrets/"), (
            f"{name}: the admin password must come from a secret file, not Grafana's default")


def published(port) -> tuple[str, str]:
    """(host ip, what is published) of one port entry, rendered (dict) or short syntax."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), json.dumps(port)
    text = str(port)
    return (text.split(":", 1)[0] if text.count(":") >= 2 else ""), text


@needs_cli
@pytest.mark.parametrize("profile, name", rendered_services())
def test_every_rendered_service_keeps_least_privilege(profile, name):
    service = rendered(profile)["services"][name]
    check_service(name, service)
    for port in service.get("ports") or ():
        host_ip, text = published(port)
        assert host_ip == "127.0.0.1", f"{name}: port {text} must bind 127.0.0.1"


@needs_cli
def test_the_credential_secret_is_a_file_under_distlab_secrets_mounted_where_nodes_read_it():
    config = rendered("tiers")
    assert config["secrets"][CREDENTIAL_SECRET]["file"] == str(
        REPO / ".distlab" / "secrets" / "credential")
    for name, service in config["services"].items():
        if is_node(service):
            [secret] = [s for s in service["secrets"] if s["source"] == CREDENTIAL_SECRET]
            assert secret["target"] == CREDENTIAL_PATH, name


@needs_cli
def test_every_profile_renders_some_service():
    for profile in profiles():
        assert rendered(profile)["services"], profile or "(no profile)"


@pytest.mark.parametrize("name", sorted(raw_compose()["services"]))
def test_every_service_in_compose_yaml_keeps_least_privilege(name):
    """The same rules on the file itself (PyYAML merges the x-node anchor), docker or not."""
    service = raw_compose()["services"][name]
    check_service(name, service)
    for port in service.get("ports") or ():
        host_ip, text = published(port)
        assert host_ip == "127.0.0.1", f"{name}: port {text} must bind 127.0.0.1"


def test_secrets_are_files_under_distlab_secrets():
    secrets = raw_compose()["secrets"]
    assert secrets[CREDENTIAL_SECRET] == {"file": "./.distlab/secrets/credential"}
    for name, secret in secrets.items():
        assert secret["file"].startswith("./.distlab/secrets/"), name


def test_no_file_in_the_repository_asks_prometheus_to_reload_or_quit():
    """Prometheus runs without its lifecycle API, so nothing may rely on /-/reload or /-/quit."""
    users = []
    for folder in ("distlab", "nodes", "scripts", "scenarios", "prometheus", "grafana",
                   "images", "tests"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".sh", ".yaml", ".yml", ".json", ""):
                text = path.read_text(errors="replace")
                if "/-/reload" in text or "/-/quit" in text:
                    users.append(str(path.relative_to(REPO)))
    users = [user for user in users if user != "tests/unit/test_compose_security.py"]
    assert users == []

"""The lab catalogue, read from compose.yaml: a lab is a Compose profile.

`x-distlab` in compose.yaml names the default lab and describes each one; the
services of a lab are those whose `profiles` include its name. Pure: reads
the file it is given and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distlab.errors import UnknownLab, UsageError

# A typo guard (chord=1000), not a capacity limit: `distlab up` weighs the lab against the
# engine (distlab/capacity.py) and says whether it fits.
MAX_REPLICAS = 256
# `${NAME}`, `${NAME:-default}` ...: a variable Compose fills in from the environment.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Lab:
    name: str
    description: str
    services: tuple[str, ...]
    # Per service of the lab: its machine count when not scaled (compose `deploy.replicas`,
    # else 1) and its role (label `distlab.role`, else the service name). Left out of the
    # hash so a Lab stays hashable.
    replicas: dict[str, int] = field(default_factory=dict, hash=False)
    roles: dict[str, str] = field(default_factory=dict, hash=False)
    # The variables the lab's services read into their machines' environment
    # (`PEER_UPLOAD_RATE_BYTES: ${DISTLAB_SEEDER_UPLOAD_RATE:-0}`) or their health check
    # (`interval: ${DISTLAB_CHORD_PROBE_INTERVAL:-10s}`): the settings a scenario's
    # `environment:` may choose at bring-up.
    variables: tuple[str, ...] = ()


@dataclass(frozen=True)
class Catalogue:
    default: str
    labs: dict[str, Lab]
    common_services: tuple[str, ...]  # in every lab (no profile): prometheus

    def lab(self, name: str | None) -> Lab:
        name = name or self.default
        try:
            return self.labs[name]
        except KeyError:
            raise UnknownLab(f"unknown lab {name!r}",
                             hint=f"labs: {', '.join(sorted(self.labs))}") from None

    def parse_scale(self, lab: Lab, pairs: list[str]) -> dict[str, int]:
        """`["kv=5"]` -> {"kv": 5}, checked against the lab's services."""
        scale: dict[str, int] = {}
        for pair in pairs:
            service, sep, count = pair.partition("=")
            if not sep or not count.isdigit():
                raise UsageError(f"--scale {pair!r} is not SERVICE=N",
                                 hint=f"SERVICE is one of {', '.join(lab.services)}; "
                                      f"for example --scale {lab.services[0]}=2")
            if service not in lab.services:
                raise UsageError(f"lab {lab.name!r} has no service {service!r}",
                                 hint=f"its services: {', '.join(lab.services)}")
            if not 0 <= int(count) <= MAX_REPLICAS:
                raise UsageError(f"--scale {pair!r}: N must be 0..{MAX_REPLICAS}")
            scale[service] = int(count)
        return scale


def machine_names(catalogue: Catalogue, lab: Lab | str, scale: Mapping[str, int] | None = None
                  ) -> list[str]:
    """The machines the lab will have at this scale: `<service>-<i>`, i in 1..count, where
    count is the scale, else compose's `deploy.replicas`, else 1."""
    if isinstance(lab, str):
        lab = catalogue.lab(lab)
    return [name for service, count in counts_at(lab, scale or {}).items()
            for name in names_of(service, count)]


def counts_at(lab: Lab, scale: Mapping[str, int]) -> dict[str, int]:
    """Machines per service of `lab` at this scale."""
    return {s: scale.get(s, lab.replicas.get(s, 1)) for s in lab.services}


def names_of(service: str, count: int) -> list[str]:
    return [f"{service}-{index}" for index in range(1, count + 1)]


def span(service: str, count: int) -> str:
    """`app-1..app-3`: machines listed short in messages."""
    if count <= 0:
        return f"no {service} machine"
    return f"{service}-1" if count == 1 else f"{service}-1..{service}-{count}"


def load_catalogue(compose_file: Path) -> Catalogue:
    document = yaml.safe_load(compose_file.read_text())
    meta = document.get("x-distlab", {})
    services = document.get("services", {})
    labs = {}
    for name, description in meta.get("labs", {}).items():
        members = tuple(s for s, spec in services.items() if name in (spec.get("profiles") or ()))
        labs[name] = Lab(name, description, members,
                         replicas={s: _replicas(services[s]) for s in members},
                         roles={s: _role(s, services[s]) for s in members},
                         variables=_variables(services[s] for s in members))
    common = tuple(s for s, spec in services.items() if not spec.get("profiles"))
    return Catalogue(meta.get("default-lab", next(iter(labs), "")), labs, common)


def _variables(specs) -> tuple[str, ...]:
    found: set[str] = set()
    for spec in specs:
        for section in ("environment", "healthcheck"):
            settings = spec.get(section) or {}
            values = settings.values() if isinstance(settings, dict) else settings
            for value in values:
                found.update(_VARIABLE.findall(str(value)))
    return tuple(sorted(found))


def _replicas(spec: dict) -> int:
    return int((spec.get("deploy") or {}).get("replicas", 1))


def _role(service: str, spec: dict) -> str:
    labels = spec.get("labels") or {}
    if isinstance(labels, list):  # Compose also takes labels as ["key=value", ...]
        labels = dict(label.partition("=")[::2] for label in labels)
    return str(labels.get("distlab.role") or service)

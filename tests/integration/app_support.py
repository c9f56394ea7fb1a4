"""App servers over a real chain-replicated data tier on loopback, for the app tier's tests.

`AppTier(limits, **app_env)` says how each test module wants its replicas and app servers
configured; its `start_tier` / `start_app` start them in a lab (tests.integration.conftest),
and `fixtures()` gives the module-scoped `tier` and `apps` (one app server per architecture,
all over one two-replica chain).
"""

from __future__ import annotations

import pytest

from nodes.app.__main__ import SPEC
from tests.integration.chain_support import DataTier, free_port
from tests.integration.conftest import address_of

ARCHITECTURES = ("iterative", "threaded", "async", "process")


class AppTier:
    def __init__(self, replica_limits: dict[str, str], **app_env) -> None:
        self.replica_limits = replica_limits  # chain_support's replica defaults are small
        self.app_env = app_env

    def start_tier(self, lab, names: tuple[str, ...]) -> DataTier:
        tier = DataTier(lab, master_port=free_port())
        tier.start_master()
        for index, name in enumerate(names):
            tier.start_replica(name, **self.replica_limits)
            tier.wait_for_chain(list(names[:index + 1]))
        return tier

    def start_app(self, lab, tier: DataTier, name: str, architecture: str = "threaded", **env):
        return lab.start(name, spec=SPEC, DATA_MASTER=address_of(tier.master),
                         APP_ARCHITECTURE=architecture, **{**self.app_env, **env})

    def fixtures(self):
        """The module-scoped `tier` and `apps` fixtures: assign them to those names."""

        @pytest.fixture(scope="module")
        def tier(shared_lab):
            tier = self.start_tier(shared_lab, ("data-1", "data-2"))
            yield tier
            tier.close()

        @pytest.fixture(scope="module")
        def apps(shared_lab, tier):
            """One app server per architecture, all over the one data tier."""
            return {architecture: self.start_app(shared_lab, tier, f"app-{architecture}",
                                                 architecture)
                    for architecture in ARCHITECTURES}

        return tier, apps

"""The lab's secrets on the host: made once, kept owner-only, handed to machines as files.

Two files under `.distlab/secrets/`, which compose.yaml names as Compose secrets:
`credential` (below) and `grafana-admin-password` (Grafana's admin password, so it is
never the default admin/admin; `distlab up` says where it is).

Every administrative and internal RPC of a lab (Control, the data master's membership
calls, replica-to-replica and Chord peer-only calls) wants this token as gRPC metadata
(nodes.common.auth). `ensure` makes it before anything starts: 32 random bytes as hex in
`.distlab/secrets/credential`. Compose mounts that file into every node as the secret
`distlab_credential`; it is never an environment variable and never printed.

Permissions: `.distlab/secrets/` is 0700, so nobody but the owner can reach the file
(`.distlab/` itself holds files containers read, like the image choices). The file is
0444 because Compose bind-mounts a file secret with its host permissions (uid, gid
and mode are Swarm-only, docker/compose#9648) and the node's unprivileged user must
read it. It lives until `distlab clean`, so machines started at different times of
one lab share it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from distlab.errors import DistlabError
from nodes.common.auth import Credential, CredentialError

SECRETS_DIR = Path(".distlab") / "secrets"
RELATIVE_PATH = SECRETS_DIR / "credential"
GRAFANA_PASSWORD_PATH = SECRETS_DIR / "grafana-admin-password"


def path_of(root: Path) -> Path:
    return root / RELATIVE_PATH


def ensure(root: Path) -> Path:
    """Make the secrets of the checkout at `root` that do not exist yet; the credential's
    path."""
    path = path_of(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    _make(path, secrets.token_hex(32))
    _make(root / GRAFANA_PASSWORD_PATH, secrets.token_urlsafe(18))
    return path


def _make(path: Path, value: str) -> None:
    if path.exists():
        return
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, 0o444)
    temporary.replace(path)


def read(root: Path) -> Credential | None:
    """The lab's credential, or None when no lab was brought up from this checkout."""
    path = path_of(root)
    if not path.exists():
        return None
    try:
        return Credential.from_file(path)
    except CredentialError as exc:
        raise DistlabError(f"the lab credential is unusable: {exc}",
                           hint="`distlab clean` then `distlab up` makes a new one") from None


def remove(root: Path) -> None:
    path_of(root).unlink(missing_ok=True)
    (root / GRAFANA_PASSWORD_PATH).unlink(missing_ok=True)

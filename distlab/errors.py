"""The one exception family of the host side. The CLI turns each into a one-line
reason plus a hint, and a non-zero exit code."""

from __future__ import annotations


class DistlabError(Exception):
    """Base of every error distlab raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint


class UsageError(DistlabError):
    """The user asked for something that does not exist or does not parse."""


class UnknownLab(UsageError):
    pass


class UnknownMachine(UsageError):
    pass


class EngineUnavailable(DistlabError):
    """No Docker engine, or no Compose v2, answers."""

    hint = "run `distlab doctor`, or scripts/setup-host.sh on a fresh Debian machine"


class CommandFailed(DistlabError):
    """A command ran and failed: a definite failure."""

    def __init__(self, argv: list[str], returncode: int, output: str, *, where: str = "host"):
        tail = output.strip().splitlines()[-1:] or ["(no output)"]
        super().__init__(f"`{' '.join(argv)}` on {where} exited {returncode}: {tail[0]}")
        self.argv = argv
        self.returncode = returncode
        self.output = output


class CommandTimeout(DistlabError):
    """A command did not finish in time: it may or may not have taken effect (indefinite)."""


class MigrationError(DistlabError):
    """A machine refused or failed a live migration; `code` is its gRPC status (a
    grpc.StatusCode), when one answered."""

    def __init__(self, message: str, *, hint: str = "", code: object = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class FaultError(DistlabError):
    """A fault could not be applied or undone."""


class ClusterError(DistlabError):
    """A host of a cluster cannot be used as asked: the message names the host, the hint
    says how to fix it."""

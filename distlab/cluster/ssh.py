"""One host reached over SSH (Fabric): run a command, put a file, and every SSH failure
turned into a ClusterError that names the host and the fix, never a paramiko traceback.

A `Shell` keeps its connection open, so a command costs one channel, not a handshake.
Commands run as root: directly when the login is root, else through `sudo -n` when the
user may (`Shell.check_root` finds out which, before anything is changed).
"""

from __future__ import annotations

import io
import shlex
from pathlib import Path

import fabric
import invoke.exceptions
import paramiko

from distlab.cluster.hosts import HostSpec
from distlab.commands import Result
from distlab.errors import ClusterError, CommandFailed, CommandTimeout

CONNECT_TIMEOUT_SECONDS = 10.0


class Shell:
    def __init__(self, host: HostSpec, *, identity: Path | None = None) -> None:
        self.host = host
        self.identity = identity
        self.sudo = ""  # "sudo -n " when the login is not root (check_root)
        self._root_checked = False
        connect: dict = {"banner_timeout": CONNECT_TIMEOUT_SECONDS,
                         "auth_timeout": CONNECT_TIMEOUT_SECONDS}
        if identity is not None:  # this key and no other (not the agent's, not ~/.ssh's)
            connect.update(key_filename=str(identity), look_for_keys=False, allow_agent=False)
        self.connection = fabric.Connection(host.address, user=host.user, port=host.port,
                                            connect_kwargs=connect,
                                            connect_timeout=CONNECT_TIMEOUT_SECONDS)

    def __str__(self) -> str:
        return str(self.host)

    def connect(self) -> None:
        if self.connection.is_connected:
            return
        try:
            self.connection.open()
        except paramiko.AuthenticationException:
            key = f"the key {self.identity}" if self.identity else "your SSH keys"
            raise ClusterError(
                f"{self.host}: {key} was refused",
                hint=f"add the public key to ~{self.host.user}/.ssh/authorized_keys on "
                     f"{self.host.address}, or name the right one with --identity") from None
        except paramiko.BadHostKeyException:
            raise ClusterError(
                f"{self.host}: its host key is not the one ~/.ssh/known_hosts has for it",
                hint=f"if the host was reinstalled: ssh-keygen -R {self.host.address}") from None
        except (paramiko.SSHException, OSError) as exc:  # refused, unknown name, timed out
            raise ClusterError(
                f"{self.host}: cannot reach it over SSH ({_reason(exc)})",
                hint=f"check the address, that the host is up and that sshd listens on "
                     f"port {self.host.port}") from None

    def check_root(self) -> None:
        """Commands will run as root: the login is root, or the user has passwordless sudo."""
        if self._root_checked:
            return
        if self.run("id -u", as_root=False).output.strip() == "0":
            self._root_checked = True
            return
        if self.run("sudo -n true", as_root=False, check=False).returncode == 0:
            self.sudo, self._root_checked = "sudo -n ", True
            return
        raise ClusterError(
            f"{self.host}: {self.host.user} is not root and cannot use sudo without a password",
            hint=f"log in as root (root@{self.host.address}) or give {self.host.user} "
                 "NOPASSWD sudo; distlab installs and drives Docker there")

    def run(self, command: str, *, timeout: float = 120.0, check: bool = True,
            as_root: bool = True) -> Result:
        """Run a shell command on the host; CommandFailed (definite) or CommandTimeout."""
        line = f"{self.sudo}sh -c {shlex.quote(command)}" if as_root and self.sudo else command
        try:
            done = self.connection.run(line, hide=True, warn=True, timeout=timeout,
                                       in_stream=False)
        except invoke.exceptions.CommandTimedOut:
            raise CommandTimeout(f"`{command}` on {self.host} did not finish within "
                                 f"{timeout:.0f} s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ClusterError(f"{self.host}: the SSH connection failed during `{command}` "
                               f"({_reason(exc)})",
                               hint="check that the host is still up and run the command "
                                    "again") from None
        result = Result(("ssh", str(self.host), command), done.exited,
                        done.stdout + done.stderr)
        if check and done.exited != 0:
            raise CommandFailed([command], done.exited, result.output, where=str(self.host))
        return result

    def put(self, content: bytes, path: str, mode: int = 0o644) -> None:
        """Write `content` to `path` on the host (through a temporary file when sudo is
        needed, since SFTP writes as the login user)."""
        target = path if not self.sudo else f"/tmp/distlab-{abs(hash(path))}"
        try:
            self.connection.put(io.BytesIO(content), target)
        except (paramiko.SSHException, OSError) as exc:
            raise ClusterError(f"{self.host}: cannot write {path} ({_reason(exc)})",
                               hint="check the free space and permissions there") from None
        if self.sudo:
            self.run(f"mv {shlex.quote(target)} {shlex.quote(path)}")
        self.run(f"chmod {mode:o} {shlex.quote(path)}")

    def put_file(self, local: Path, path: str) -> None:
        """Copy a (large) local file to `path` on the host, streamed over SFTP."""
        try:
            self.connection.put(str(local), path)
        except (paramiko.SSHException, OSError) as exc:
            raise ClusterError(f"{self.host}: cannot copy {local.name} to {path} "
                               f"({_reason(exc)})",
                               hint="check the free space there") from None

    def close(self) -> None:
        self.connection.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

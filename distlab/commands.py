"""The one place the host runs commands: timeouts, logging and test fakes live here.

`Runner.run` runs an argv on the host; machines' commands go through the
runtime's `exec`, which has the same shape; tests give the runtime a fake instead
(tests/unit/distlab/conftest.py).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from distlab.errors import CommandFailed, CommandTimeout

log = logging.getLogger("distlab.commands")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    output: str  # stdout and stderr, interleaved as the command wrote them


class Runner:
    def run(self, argv: Sequence[str], *, timeout: float = 120.0, check: bool = True,
            env: Mapping[str, str] | None = None, cwd: str | None = None,
            on_line: Callable[[str], None] | None = None) -> Result:
        """Run `argv`; raise CommandFailed (definite) or CommandTimeout (indefinite)."""
        log.debug("run %s", " ".join(argv))
        try:
            if on_line is None:
                done = subprocess.run(list(argv), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, timeout=timeout,
                                      env=dict(env) if env else None, cwd=cwd, check=False)
                output, code = done.stdout, done.returncode
            else:
                output, code = _stream(argv, timeout, env, cwd, on_line)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(
                f"`{' '.join(argv)}` did not finish within {timeout:.0f} s") from None
        except FileNotFoundError:
            raise CommandFailed(list(argv), 127, f"{argv[0]}: command not found") from None
        result = Result(tuple(argv), code, output)
        if check and code != 0:
            raise CommandFailed(list(argv), code, output)
        return result


def _stream(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None,
            cwd: str | None, on_line: Callable[[str], None]) -> tuple[str, int]:
    lines: list[str] = []
    with subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=dict(env) if env else None, cwd=cwd) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            on_line(line.rstrip("\n"))
        code = process.wait(timeout=timeout)
    return "".join(lines), code

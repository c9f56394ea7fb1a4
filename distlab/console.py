"""The one console every `distlab` command prints on, and the one way an error is shown.

`out` is stdout, wide enough for tables when stdout is a pipe or a CI log; `err` is
stderr. `print_error` writes `distlab: error: ...` and `hint: ...`, one line each
whatever the width, so `2>&1 | grep` and CI logs see them whole.
"""

from __future__ import annotations

import sys

from rich.console import Console

# Wide enough for the status table when output is a pipe or a CI log, not a terminal.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)


def print_error(message: str, hint: str = "", *, console: Console = err) -> None:
    console.print(f"distlab: error: {message}", markup=False, soft_wrap=True)
    if hint:
        console.print(f"hint: {hint}", markup=False, soft_wrap=True)


def fail(message: str, hint: str, code: int) -> None:
    """Print the error and exit with `code` (2: a bad command line, 1: anything else)."""
    print_error(message, hint)
    sys.exit(code)

"""Python source a user hands a machine (a MapReduce job, a serverless function), made into
a module of its own: compiled and run in a fresh namespace, never imported from disk, so
two jobs or functions with one name never see each other's globals.

`import_source(source, module_name, filename[, preset])` returns the module, or raises
`UserCodeError` whose message says what went wrong ("SyntaxError: expected ':' (line 1)");
whatever the code raises while it runs at import is caught, SystemExit included, so user
code cannot stop the machine that loads it.
"""

from __future__ import annotations

import types
from typing import Any

MAX_MESSAGE_CHARS = 300


class UserCodeError(ValueError):
    """The source does not compile, or raised while its module ran."""


def import_source(source: str, module_name: str, filename: str,
                  preset: dict[str, Any] | None = None) -> types.ModuleType:
    """The module; `preset` names are its globals before its code runs."""
    module = types.ModuleType(module_name)
    module.__file__ = filename
    module.__dict__.update(preset or {})
    try:
        code = compile(source, filename, "exec")
        exec(code, module.__dict__)  # noqa: S102 - running the user's code is the point
    except BaseException as exc:  # user code may raise anything at import, SystemExit too
        raise UserCodeError(describe(exc)) from None
    return module


def describe(exc: BaseException) -> str:
    """`Type: message`, bounded, with the line for a syntax error."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    return f"{type(exc).__name__}: {str(exc)[:MAX_MESSAGE_CHARS]}"

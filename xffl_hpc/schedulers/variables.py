"""Reading environment variables with errors that name the variable at fault."""

from __future__ import annotations

from collections.abc import Mapping

from xffl_hpc.errors import PlacementError

#: Longest value quoted back in an error message.
_QUOTE_LIMIT = 80


def quote(value: str) -> str:
    """``repr`` of a value, shortened when it is long."""
    if len(value) > _QUOTE_LIMIT:
        return repr(value[:_QUOTE_LIMIT]) + f"... ({len(value)} characters)"
    return repr(value)


def read_str(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` set to a non-blank value, as ``(name, stripped value)``."""
    for name in names:
        value = environ.get(name)
        if value is not None and value.strip():
            return name, value.strip()
    return None


def read_int(environ: Mapping[str, str], *names: str, minimum: int = 0) -> tuple[str, int] | None:
    """The first of ``names`` that is set, parsed as a decimal integer ``>= minimum``."""
    found = read_str(environ, *names)
    if found is None:
        return None
    name, text = found
    return name, parse_int(name, text, minimum=minimum)


def parse_int(name: str, text: str, minimum: int = 0) -> int:
    """``text`` (the value of variable ``name``) as a decimal integer ``>= minimum``."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise PlacementError(f"{name}={quote(text)}: expected a whole number >= {minimum}")
    value = int(text)
    if value < minimum:
        raise PlacementError(f"{name}={quote(text)}: expected a whole number >= {minimum}")
    return value


def require_int(environ: Mapping[str, str], *names: str, minimum: int = 0) -> tuple[str, int]:
    """Like :func:`read_int`, but a missing variable is an error naming all ``names``."""
    found = read_int(environ, *names, minimum=minimum)
    if found is None:
        raise PlacementError(f"{' or '.join(names)} is not set: expected a whole number")
    return found

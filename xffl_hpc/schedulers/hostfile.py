"""Host files with one line per slot (PBS's PBS_NODEFILE, LSF's LSB_DJOB_RANKFILE and
LSB_DJOB_HOSTFILE)."""

from __future__ import annotations

import errno
import os

from xffl_hpc.errors import PlacementError
from xffl_hpc.schedulers.hostlist import MAX_HOSTS
from xffl_hpc.schedulers.variables import quote

#: Longest host file read; a longer one is refused rather than loaded.
MAX_BYTES = 64 * MAX_HOSTS


def read_slots(variable: str, path: str) -> tuple[str, ...]:
    """The non-blank lines of the file ``path`` named by ``variable``, one per slot."""
    slots = read_slots_if_present(variable, path)
    if slots is None:
        raise PlacementError(
            f"{variable}={quote(path)}: cannot read the host file ({os.strerror(errno.ENOENT)})"
        )
    return slots


def read_slots_if_present(variable: str, path: str) -> tuple[str, ...] | None:
    """Like :func:`read_slots`, but ``None`` when no file exists at ``path``; any other
    reason not to read it (permission, size, encoding, format) is still an error."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(MAX_BYTES + 1) if size <= MAX_BYTES else b""
    except FileNotFoundError:
        return None
    except OSError as error:
        raise PlacementError(
            f"{variable}={quote(path)}: cannot read the host file ({error.strerror})"
        ) from None
    except ValueError:  # open() refuses a NUL byte, which no file name holds
        raise PlacementError(f"{variable}={quote(path)}: not a file name (NUL byte)") from None
    if size > MAX_BYTES or len(data) > MAX_BYTES:
        raise PlacementError(f"{variable}={quote(path)}: host file larger than {MAX_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise PlacementError(f"{variable}={quote(path)}: host file is not UTF-8 text") from None
    slots = tuple(line.strip() for line in text.splitlines() if line.strip())
    for line in slots:
        if any(c.isspace() for c in line):
            raise PlacementError(
                f"{variable}={quote(path)}: line {quote(line)} is not a single host name"
            )
    return slots


def unique_hosts(slots: tuple[str, ...]) -> tuple[str, ...]:
    """Hosts in the order of their first slot."""
    return tuple(dict.fromkeys(slots))

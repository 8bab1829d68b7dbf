"""The one error type for user mistakes.

Anything a user can get wrong (an option value, an env id, a file path, a checkpoint from another run)
raises :class:`LoTUserError` with a one-line message that names the problem and what is allowed. The CLI
turns it into that line on stderr and exit code 2; Python callers can catch it.
"""

from __future__ import annotations


class LoTUserError(ValueError):
    """A user-facing error: bad option, bad file, incompatible checkpoint."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`LoTUserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise LoTUserError(message)

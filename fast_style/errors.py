"""User errors: mistakes in paths, files or settings that get one clear line instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(ValueError):
    """Something the user can fix; the message says what is wrong and what to do."""


@contextmanager
def exit_on_user_error(exit_code: int = 2) -> Iterator[None]:
    """Turn a UserError (also one wrapped by Hydra's instantiate) into ``error: ...`` and an exit code."""
    try:
        yield
    except Exception as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(exit_code)

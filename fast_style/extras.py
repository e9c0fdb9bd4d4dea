"""The optional fiftyone extra: imported only where it is used, with one line that says how to
install it when it is missing. FiftyOne takes seconds to import (and starts a MongoDB), which train.py and stylize.py
must not pay when it is not used."""

from __future__ import annotations

from types import ModuleType

from fast_style.errors import UserError


def import_fiftyone() -> ModuleType:
    """The fiftyone package, or one line that says how to install it."""
    try:
        import fiftyone
    except ImportError as e:
        raise UserError('FiftyOne is not installed; pip install -e ".[fiftyone]" (or pip install fiftyone)') from e
    return fiftyone

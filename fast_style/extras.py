"""The optional extras (``fiftyone``, ``onnx``): imported only where they are used, with one line that says how to
install one that is missing. FiftyOne takes seconds to import (and starts a MongoDB), which train.py and stylize.py
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


def check_onnx(what: str) -> None:
    """Raise one line naming ``what`` unless torch.onnx's exporter can run: it needs onnx and onnxscript."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"{what} needs the onnx extra ({e}): pip install 'fast-style[onnx]'") from e

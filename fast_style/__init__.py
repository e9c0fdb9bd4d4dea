"""fast-style: fast feed-forward neural style transfer; ``from fast_style import Stylizer`` is its Python API.

README.md ("What it is") lists the modules by layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fast_style.inference import Stylizer

__all__ = ["Stylizer"]


def __getattr__(name: str) -> Any:
    """Import Stylizer on first use, so that ``python -m fast_style.data`` (or ``.export``) does not find its own
    module already imported by the package (runpy warns about that, and it costs start-up time)."""
    if name == "Stylizer":
        from fast_style.inference import Stylizer

        return Stylizer
    raise AttributeError(f"module 'fast_style' has no attribute {name!r}")

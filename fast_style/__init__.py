"""fast-style: fast feed-forward neural style transfer."""

from fast_style.inference import Stylizer

__all__ = ["Stylizer"]

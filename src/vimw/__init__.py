"""vimw: Vision Middleware.

A zoo of lightweight plug-in modules trained on one frozen vision backbone, aggregated
per downstream task (ViM), and logit-space adaptation transfer from a weak to a
stronger model without backpropagation (TransMiter).
"""

from vimw.errors import VimwError
from vimw.version import __version__

__all__ = ["VimwError", "__version__"]

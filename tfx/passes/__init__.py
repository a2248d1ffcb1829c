"""The fx side of the compiler: capture, match, rewrite, emit."""

from ._capture import Captured, Tracer, capture
from ._emit import emit, output_error
from ._match import Site, find_sites
from ._rewrite import build_layer, rewrite, splice

__all__ = [
    "Captured",
    "Tracer",
    "capture",
    "Site",
    "find_sites",
    "build_layer",
    "rewrite",
    "splice",
    "emit",
    "output_error",
]

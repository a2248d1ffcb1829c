"""The fx side of the compiler: capture, match, calibrate, decompose, rewrite, emit."""

from ._analysis import Calibrate, Capture, Match
from ._capture import Captured, Tracer, capture
from ._decompose import Decomposer, build_layer, decompose
from ._emit import Emit, emit, output_error
from ._match import Site, find_sites
from ._pass import Compilation, Pass, SiteError
from ._prior import input_priors
from ._rewrite import Rewrite, rewrite, splice

__all__ = [
    "Captured",
    "Tracer",
    "capture",
    "Site",
    "find_sites",
    "build_layer",
    "decompose",
    "Decomposer",
    "rewrite",
    "splice",
    "emit",
    "output_error",
    "Compilation",
    "Pass",
    "SiteError",
    "Capture",
    "Match",
    "Calibrate",
    "input_priors",
    "Rewrite",
    "Emit",
]

"""tltorch's module path ``tltorch.functional.linear``: ``factorized_linear``, re-exported.

``tfx.functional.linear.factorized_linear`` is ``tfx.functional.factorized_linear``.
"""

from ._linear import factorized_linear

__all__ = ["factorized_linear"]

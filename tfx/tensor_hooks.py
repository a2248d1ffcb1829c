"""tltorch's ``tltorch.tensor_hooks``, under tfx: tensor dropout and tensor lasso.

``from tfx.tensor_hooks import tensor_dropout`` works as it does with tltorch. The
hooks are tfx's (:mod:`tfx.nn`); the per-form classes (``CPDropout``, ``CPLasso``, ...)
are here too, as tltorch keeps them in ``tensor_hooks._tensor_dropout`` and ``_tensor_lasso``.
"""

from .nn._hooks import *  # noqa: F403 - the hooks' module is this module's content
from .nn._hooks import __all__ as __all__  # noqa: PLC0414

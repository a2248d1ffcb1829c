"""The cost model: candidates per site, their params / FLOPs / error, strategies, the plan.

Pure: shapes and numbers (and the dense weights, for their spectra); no fx, no modules.
"""

from ._budget import Budget, normalise_budget
from ._choose import available_strategies, choose, register_strategy
from ._device import DeviceProfile, measure_device
from ._graph import build_graph
from ._options import FORMS, candidates, dense_option
from ._plan import FactorizationPlan
from ._planner import Group, plan_graph
from ._records import Choice, Option, SiteInfo

__all__ = [
    "DeviceProfile",
    "measure_device",
    "Budget",
    "normalise_budget",
    "choose",
    "register_strategy",
    "available_strategies",
    "build_graph",
    "plan_graph",
    "Group",
    "FORMS",
    "candidates",
    "dense_option",
    "FactorizationPlan",
    "Choice",
    "Option",
    "SiteInfo",
]

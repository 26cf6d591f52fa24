"""Certified lower bounds on the optimal expected latency J and certified optimality gaps.

``lower_bound(batch, Levels())`` (or the name, ``lower_bound(batch, "levels")``) gives, per
instance, a number ≤ the optimal J with an integer :class:`BoundStatus` and the time taken;
``certify(batch, solution)`` gives the certified gap ``J / bound − 1``. The bound methods are
frozen, validated, documented objects: :class:`Auto` (the default), :class:`Levels`,
:class:`ThresholdLP`, :class:`AssignmentLP`, :class:`ThresholdHighs`, :class:`HighsLP`,
:class:`Trivial`. Why each is valid, and the measured gaps: the handbook page *Certified bounds*.
``slimjax.lower_bound`` and ``slimjax.certify`` are these two functions, imported on first use.
"""

from slimjax.bounds._api import Bound as Bound
from slimjax.bounds._api import Certificate as Certificate
from slimjax.bounds._api import certify as certify
from slimjax.bounds._api import lower_bound as lower_bound
from slimjax.bounds._api import objective64 as objective64
from slimjax.bounds._methods import METHODS as METHODS
from slimjax.bounds._methods import AssignmentLP as AssignmentLP
from slimjax.bounds._methods import Auto as Auto
from slimjax.bounds._methods import BoundMethod as BoundMethod
from slimjax.bounds._methods import BoundStatus as BoundStatus
from slimjax.bounds._methods import HighsLP as HighsLP
from slimjax.bounds._methods import Levels as Levels
from slimjax.bounds._methods import ThresholdHighs as ThresholdHighs
from slimjax.bounds._methods import ThresholdLP as ThresholdLP
from slimjax.bounds._methods import Trivial as Trivial
from slimjax.bounds._methods import as_method as as_method

__all__ = ["METHODS", "AssignmentLP", "Auto", "Bound", "BoundMethod", "BoundStatus", "Certificate", "HighsLP", "Levels",
           "ThresholdHighs", "ThresholdLP", "Trivial", "as_method", "certify", "lower_bound", "objective64"]

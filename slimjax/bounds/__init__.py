"""Certified lower bounds on the optimal expected latency J and certified optimality gaps.

``lower_bound(batch, method="auto")`` gives, per instance, a number ≤ the optimal J with a
status and the time taken; ``certify(batch, solution)`` gives the certified gap ``J / bound − 1``.
The methods, why each is valid, and the measured gaps: the handbook page *Certified bounds*.
``slimjax.lower_bound`` and ``slimjax.certify`` are these two functions, imported on first use.
"""

from slimjax.bounds._api import METHODS as METHODS
from slimjax.bounds._api import Bound as Bound
from slimjax.bounds._api import Certificate as Certificate
from slimjax.bounds._api import certify as certify
from slimjax.bounds._api import lower_bound as lower_bound
from slimjax.bounds._api import objective64 as objective64

__all__ = ["METHODS", "Bound", "Certificate", "certify", "lower_bound", "objective64"]

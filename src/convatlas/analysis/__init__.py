"""Analysis of any network: per-layer summary, MACs, receptive fields (analytic and empirical), effective fields.

>>> from convatlas.analysis import summary, receptive_field
>>> print(summary(model, (3, 224, 224), depth=2))
>>> receptive_field(model, (3, 224, 224)).size
"""

from convatlas.analysis.erf import effective_receptive_field, plot_effective_receptive_field
from convatlas.analysis.receptive import (
    ReceptiveField,
    empirical_receptive_field,
    gradient_support,
    receptive_field,
)
from convatlas.analysis.summary import Row, Summary, summary

__all__ = [
    "ReceptiveField",
    "Row",
    "Summary",
    "effective_receptive_field",
    "empirical_receptive_field",
    "gradient_support",
    "plot_effective_receptive_field",
    "receptive_field",
    "summary",
]

"""The atlas: pictures of convolutions and of whole networks, computed from the arithmetic, the operators and the
analysis (never from a geometry of their own).

>>> from convatlas.atlas import draw_convolution, draw_transposed, write_report
>>> draw_convolution((5, 5), 3, stride=2, padding=1).save("conv.gif")
>>> draw_transposed((3, 3), 3, stride=2, padding=1, output_padding=1, view="scatter").save("scatter.svg")
>>> write_report(model, (3, 224, 224), "report.html")
"""

from convatlas.atlas.channels import draw_channels
from convatlas.atlas.draw import Drawing, draw_convolution, draw_pooling
from convatlas.atlas.field import field_figure
from convatlas.atlas.network import network
from convatlas.atlas.report import build_report, write_report
from convatlas.atlas.sentence import draw_sentence
from convatlas.atlas.transposed import draw_transposed

__all__ = [
    "Drawing",
    "build_report",
    "draw_channels",
    "draw_convolution",
    "draw_pooling",
    "draw_sentence",
    "draw_transposed",
    "field_figure",
    "network",
    "write_report",
]

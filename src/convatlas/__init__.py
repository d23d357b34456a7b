"""convatlas: the convolutional network family from the arithmetic up.

Layers, each importing only from those above it: ``arithmetic`` (closed forms, no torch), ``ops`` (pure functions over
tensors), ``nn`` (thin modules and shared blocks), ``models`` (the zoo and its registry), ``detection`` (the R-CNN
lineage), ``analysis`` (summaries and receptive fields), ``data``, ``train`` and the command line in ``cli``.
"""

__version__ = "0.1.0"

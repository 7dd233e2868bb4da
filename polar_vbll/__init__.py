"""polar_vbll: Bayesian fine-tuning of small LLMs with PoLAR adapters and a VBLL head.

A teaching package: one idea per module (see the README for the map), each module
importable on its own. Importing the package itself stays cheap; the heavy modules
(transformers, plotly, ipywidgets) load only when you import them.
"""

from polar_vbll.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    NumericalError,
    PolarVBLLError,
    ShapeError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "NumericalError",
    "PolarVBLLError",
    "ShapeError",
    "__version__",
]

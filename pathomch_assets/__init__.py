"""PathoMCH on Dagster: molecular cartography and tumour heterogeneity from H&E slides.

``defs`` (the Dagster ``Definitions``) is built on first access from ``$PATHOMCH_CONFIG``,
so importing a science module never needs a valid deployment configuration.
"""

import os as _os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) is noise in run logs.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def __getattr__(name):
    if name == "defs":
        from .definitions import defs

        return defs
    raise AttributeError(name)


def __dir__():
    return ["defs", "__version__"]

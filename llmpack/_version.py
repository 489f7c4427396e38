"""llmpack's version, in a leaf module every layer may import (``llmpack.__version__`` re-exports it).

Read it at call time (``from llmpack._version import __version__`` inside the function) where a test may
change it.

Example:
    >>> from llmpack._version import __version__
    >>> __version__.count(".") >= 1
    True
"""

__version__ = "0.1.0"

"""llmpack.measure: size, latency and accuracy deltas of a candidate vs its baseline, as a Report.

``llmpack.measure(...)`` is :func:`llmpack.measure.api.measure` (this package forwards calls).
"""

from llmpack._callable import make_callable

make_callable(__name__, "llmpack.measure.api:measure")

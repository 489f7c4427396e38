"""Decisions made by running the model at quantize time: calibration statistics and the fake-quantization
simulator (:mod:`~llmpack.tune.calibrate`), per-layer sensitivity (:mod:`~llmpack.tune.sensitivity`), the
accuracy-budget search (:mod:`~llmpack.tune.budget`) and the FP16 activation check (:mod:`~llmpack.tune.fp16`).

This layer sits above the runtime (it runs models, streamed or in memory) and below the pipeline that writes
files; the pure quantization math and formats it decides about live in :mod:`llmpack.quant`.
"""

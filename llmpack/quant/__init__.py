"""llmpack.quant."""

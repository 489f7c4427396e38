"""llmpack.measure."""

"""llmpack.pack."""

"""llmpack.checkpoint."""

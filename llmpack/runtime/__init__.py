"""llmpack.runtime."""

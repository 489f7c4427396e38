"""llmpack.commands."""

"""``python -m llmpack`` — same as the ``llmpack`` console script."""

from llmpack.cli import entry

if __name__ == "__main__":
    entry()

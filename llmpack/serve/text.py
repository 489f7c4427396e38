"""Incremental detokenization with stop strings (what streaming sends, one delta per token)."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["Detokenizer"]


class Detokenizer:
    """Turns token ids into text deltas; holds back an incomplete UTF-8 character and any tail that
    could still become a stop string; stops at the first stop string (which is not sent).

    Example:
        >>> from llmpack.testing import byte_tokenizer
        >>> d = Detokenizer(byte_tokenizer(), stops=["lo"])
        >>> [d.add(t) for t in b"Hello"]
        [('', False), ('H', False), ('e', False), ('l', False), ('', True)]
        >>> d.text
        'Hel'
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> tuple[str, bool]:
        """Add one token; returns (text to send now, whether a stop string ended the text)."""
        if self.stopped:
            return "", True
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return "", False  # an incomplete multi-byte character: wait for the next token
        self.text = text
        for s in self.stops:
            k = text.find(s, max(0, self.sent - len(s) + 1))
            if k >= 0:
                self.stopped = True
                self.text = text[:k]
                return self._take(len(self.text)), True
        return self._take(max(self.sent, len(text) - self.hold)), False

    def flush(self) -> str:
        """The text held back, at the end of the generation."""
        return "" if self.stopped else self._take(len(self.text))

    def _take(self, end: int) -> str:
        delta = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return delta

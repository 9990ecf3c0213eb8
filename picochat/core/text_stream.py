"""Turning a stream of token ids into a stream of text, for the terminal chat and the server.

Two things go wrong when text is streamed token by token, and both are handled here once:

- **Split characters.** Byte-level BPE often spends 2-3 tokens on one Chinese character (or an
  emoji). Decoding a token list that ends mid-character gives a trailing "\\ufffd", and sending it
  would show a broken character. `IncrementalDecoder` keeps the tokens of an incomplete character
  back until the character is whole, and decodes only the tokens since the last complete
  character, so streaming a reply of n tokens costs O(n), not O(n^2).
- **Stop strings.** A reply must end *before* a stop string such as "\\n\\nUser:", and no piece of
  the stop string may have been sent already. `StopStringFilter` holds back any tail of the text
  that could still grow into a stop string, and cuts the text where one appears.

Both are plain, single-threaded objects: feed them pieces, send what they return.
"""

from __future__ import annotations

from picochat.core.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"  # what decoding an incomplete UTF-8 sequence yields


class IncrementalDecoder:
    """push(token) -> the text that token completes ("" while a character is still incomplete).

    The concatenation of every push() and the final flush() equals
    `tokenizer.decode(tokens, skip_special=True)` of all tokens pushed: a segment of tokens is
    decoded again only until it ends on a complete character, and a byte-level decode of a
    token list split at a character boundary is the concatenation of the decodes of its parts.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self._segment_start = 0  # tokens before this index have been decoded and returned

    def push(self, token: int) -> str:
        self.tokens.append(int(token))
        text = self.tokenizer.decode(self.tokens[self._segment_start:], skip_special=True)
        if text.endswith(REPLACEMENT):
            return ""  # the last character is not complete yet: wait for its next byte token
        self._segment_start = len(self.tokens)
        return text

    def flush(self) -> str:
        """Whatever is left at the end (an incomplete character decodes to "\\ufffd")."""
        text = self.tokenizer.decode(self.tokens[self._segment_start:], skip_special=True)
        self._segment_start = len(self.tokens)
        return text


class StopStringFilter:
    """feed(piece) -> (text safe to send, whether a stop string was reached).

    Text is held back while its tail could be the beginning of a stop string; once a stop string
    appears, everything before it is released and the rest (the stop string included) is dropped.
    """

    def __init__(self, stop: list[str] | tuple[str, ...] = ()):
        self.stop = [s for s in stop if s]
        self._held = ""  # received but not yet sent
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        held = self._held + piece
        if not self.stop:
            self._held = ""
            return held, False
        cut = min((i for i in (held.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self._held, self.stopped = "", True
            return held[:cut], True
        keep = self._longest_stop_prefix_suffix(held)
        self._held = held[len(held) - keep:] if keep else ""
        return held[:len(held) - keep], False

    def flush(self) -> str:
        """The held-back tail when the reply ends for another reason (stop token, length)."""
        text, self._held = ("" if self.stopped else self._held), ""
        return text

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

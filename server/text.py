"""Incremental detokenization and stop strings for streamed output.

Text is released only up to the last complete character (a byte-level BPE token can end inside a
UTF-8 sequence, which decodes to U+FFFD until the rest arrives), and a tail that could still grow
into a stop string is held back, so a stream never shows text a stop string later cuts off.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class TextStream:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str] | None = None) -> None:
        self.tok = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.text = ""  # decoded so far (complete characters only)
        self.sent = 0  # characters of self.text already released
        self.stopped = False  # a stop string was found; self.text ends right before it
        # incremental decoding (as TGI / vLLM): only ids[prefix:] are decoded each time; the text of
        # ids[prefix:read] is already in self.text and is subtracted, which keeps word boundaries right
        self._prefix = self._read = 0

    def _decode(self, final: bool) -> None:
        before = self.tok.decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        window = self.tok.decode(self.ids[self._prefix :], skip_special_tokens=True)
        if not final and window.endswith("\ufffd"):  # an unfinished UTF-8 sequence: wait for more bytes
            return
        if len(window) > len(before) or final:
            new = window[len(before) :]
            scan_from = max(0, len(self.text) - max((len(x) for x in self.stop), default=0))
            self.text += new
            self._prefix, self._read = self._read, len(self.ids)
            for stop in self.stop:
                i = self.text.find(stop, scan_from)
                if i >= 0:
                    self.text, self.stopped = self.text[:i], True
                    scan_from = min(scan_from, i)

    def push(self, ids: list[int]) -> str:
        """Add generated tokens; return the text that is now safe to release."""
        if self.stopped:
            return ""
        self.ids.extend(ids)
        self._decode(final=False)
        end = len(self.text)
        if not self.stopped:
            for s in self.stop:  # hold back a suffix that is a prefix of a stop string
                for n in range(min(len(s) - 1, end), 0, -1):
                    if self.text.endswith(s[:n]):
                        end = min(end, len(self.text) - n)
                        break
        delta = self.text[self.sent : end]
        self.sent = end
        return delta

    def finish(self) -> str:
        """The generation ended: release everything left."""
        if not self.stopped:
            self._decode(final=True)
        delta = self.text[self.sent :]
        self.sent = len(self.text)
        return delta

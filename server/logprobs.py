"""Token logprobs in OpenAI's two response formats (the engine computes them: decoding/logprobs.py).

Completions (legacy): `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}`.
Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}`.
A token's text is its own decoding (a piece of a multi-byte character shows as U+FFFD, as in vLLM).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from specserve.decoding.row import TokenLogprob


class TokenText:
    """Each token id's own text, decoded once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            self.cache[token] = self.tokenizer.decode([token])
        return self.cache[token]


def completion_logprobs(text: TokenText, entries: list[TokenLogprob], offset: int = 0) -> dict:
    """Legacy format; `offset`: characters of the completion before these tokens."""
    tokens = [text(e.token) for e in entries]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [_by_text(text, e.top) for e in entries],
        "text_offset": offsets,
    }


def _by_text(text: TokenText, top: list[tuple[int, float]]) -> dict[str, float]:
    """{token text: logprob}; tokens that print alike keep the likelier one's logprob."""
    out: dict[str, float] = {}
    for t, lp in top:
        out.setdefault(text(t), lp)
    return out


def _chat_token(text: TokenText, token: int, logprob: float) -> dict:
    s = text(token)
    return {"token": s, "logprob": logprob, "bytes": list(s.encode("utf-8"))}


def chat_logprobs(text: TokenText, entries: list[TokenLogprob]) -> dict:
    return {
        "content": [
            _chat_token(text, e.token, e.logprob)
            | {"top_logprobs": [_chat_token(text, t, lp) for t, lp in e.top]}
            for e in entries
        ]
    }


def native_logprobs(entries: list[TokenLogprob]) -> list[dict]:
    """/generate: token ids, no text."""
    return [
        {"token_id": e.token, "logprob": e.logprob, "top_logprobs": [list(x) for x in e.top]} for e in entries
    ]

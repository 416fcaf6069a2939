"""Argument types of `specserve bench serve`: each value checked where argparse reads it, so a bad
flag is a clear usage error before any request is sent."""

from __future__ import annotations

import argparse
import math

from specserve.decoding.params import MAX_SPECULATIVE_TOKENS, METHODS


def _k(text: str) -> int | str:
    return text if text == "auto" else _positive(text)


def _count(text: str, least: int = 0) -> int:
    try:
        n = int(text)
    except ValueError:
        n = least - 1
    if n < least:
        raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text}")
    return n


def _positive(text: str) -> int:
    return _count(text, least=1)


def _ratio(text: str) -> float:
    try:
        r = float(text)
    except ValueError:
        r = -1.0
    if not 0 <= r < 1:
        raise argparse.ArgumentTypeError(f"expected a ratio in [0, 1), got {text}")
    return r


def _seconds(text: str, zero_ok: bool = False) -> float:
    s = float(text)
    if not ((s > 0 or (zero_ok and s == 0)) and math.isfinite(s)):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text}")
    return s


def _duration(text: str) -> float:
    return _seconds(text, zero_ok=True)


def _rate(text: str) -> float:
    rate = float(text)
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"request rate must be > 0 (or inf), got {text}")
    return rate


def _variant(text: str) -> str:
    """METHOD or METHOD:K or METHOD:auto (bench.loadgen.split_variant reads it)."""
    method, _, k = text.partition(":")
    if method not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown method {method!r} ({', '.join(METHODS)})")
    if k and k != "auto" and not (k.isdigit() and 1 <= int(k) <= MAX_SPECULATIVE_TOKENS):
        raise argparse.ArgumentTypeError(f"K in {text!r} must be 1..{MAX_SPECULATIVE_TOKENS} or auto")
    return text


SLO_KEYS = ("ttft", "tpot", "e2e")


def _slo(text: str) -> tuple[str, float]:
    """KEY:MS (ttft, tpot or e2e, in milliseconds) -> (KEY, seconds)."""
    key, _, ms = text.partition(":")
    if key not in SLO_KEYS:
        raise argparse.ArgumentTypeError(f"SLO {text!r}: the key must be one of {', '.join(SLO_KEYS)}")
    try:
        value = float(ms)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"SLO {text!r}: expected KEY:MS with MS > 0, e.g. ttft:500")
    return key, value / 1000

"""A byte-level BPE tokenizer for Python source, trained with `tokenizers` and saved for AutoTokenizer.

Byte-level: every byte string encodes, and decoding gives the exact source back (whitespace and
indentation included: no prefix space, no normalizer, no clean-up of spaces). One special token,
`<|endoftext|>`, separates files and serves as bos and eos; `<|pad|>` pads.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
        min_frequency=2,
        show_progress=True,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    log.info("tokenizer: %d tokens", tok.get_vocab_size())
    return tok


def wrap(tok: Tokenizer, context: int) -> PreTrainedTokenizerFast:
    """The transformers view of a trained tokenizer: special tokens set, no space clean-up."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=None,
        pad_token=PAD,
        model_max_length=context,
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
    )


def save_tokenizer(tok: Tokenizer, out_dir: Path, context: int) -> PreTrainedTokenizerFast:
    out_dir.mkdir(parents=True, exist_ok=True)
    fast = wrap(tok, context)
    fast.save_pretrained(str(out_dir))
    return fast


def tokenizer_digest(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(Path(path) / "tokenizer.json"))

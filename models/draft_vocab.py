"""A drafter's reduced vocabulary (EAGLE-3's, FR-Spec's): it proposes only the tokens most frequent
in its training data, so its lm_head keeps their rows and reads fewer bytes every forward.

q is 0 for the other tokens, so verification stays exact (the proposers map the drafter's indices
back to token ids, `decoding/sampling.py: widen`). An EAGLE head stores its ids with its weights
(models/eagle.py); a draft model folder holds them in `draft_vocab.json`, which `load_models`
applies (`specserve train draft-vocab` writes it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

VOCAB_FILE = "draft_vocab.json"


def check_size(n: int, vocab_size: int) -> None:
    if not 1 <= n <= vocab_size:
        raise ValueError(f"a draft vocabulary needs 1..{vocab_size} tokens, got {n}")


def frequent_tokens(tokens: np.ndarray, vocab_size: int, n: int) -> tuple[torch.Tensor, float]:
    """The n most frequent token ids of `tokens` (ties: the lower id), sorted, and the share of
    `tokens` they cover."""
    check_size(n, vocab_size)
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=vocab_size)[:vocab_size]
    top = np.argsort(-counts, kind="stable")[:n]
    return torch.from_numpy(np.sort(top)).long(), float(counts[top].sum() / max(int(counts.sum()), 1))


def rows_of(linear: nn.Linear, ids: torch.Tensor, vocab_size: int) -> tuple[nn.Linear, torch.Tensor]:
    """A frozen copy of the projection `linear` keeping the rows `ids` (checked against
    vocab_size), and the sorted ids: a drafter's logits then index into them."""
    ids, V = torch.as_tensor(ids).long().flatten(), vocab_size
    if not (len(ids) and ids.unique().numel() == len(ids) and 0 <= int(ids.min()) <= int(ids.max()) < V):
        raise ValueError(f"a draft vocabulary needs distinct token ids in 0..{V - 1}, got {len(ids)} ids")
    w = linear.weight
    ids = ids.sort().values.to(w.device)
    new = nn.Linear(w.shape[1], len(ids), bias=getattr(linear, "bias", None) is not None)
    new = new.to(device=w.device, dtype=w.dtype).requires_grad_(False)
    with torch.no_grad():
        new.weight.copy_(w[ids])
        if new.bias is not None:
            new.bias.copy_(linear.bias[ids])
    return new, ids


def restrict_model(model: PreTrainedModel, ids: torch.Tensor) -> int:
    """Make a draft model propose over `ids` only (its lm_head's rows; `model.draft_vocab`, and the
    rows it had, `model.draft_vocab_size`). Returns the bytes its projection no longer reads."""
    old = model.get_output_embeddings()
    new, model.draft_vocab = rows_of(old, ids, old.weight.shape[0])
    model.draft_vocab_size = old.weight.shape[0]
    model.config.tie_word_embeddings = False  # (the input embedding stays whole)
    model.set_output_embeddings(new)
    return (old.weight.shape[0] - len(new.weight)) * old.weight.shape[1] * old.weight.element_size()


def read(folder: str | Path) -> torch.Tensor | None:
    """The draft vocabulary stored in a model folder, if any."""
    path = Path(folder) / VOCAB_FILE
    if not path.is_file():
        return None
    return torch.tensor(json.loads(path.read_text())["token_ids"], dtype=torch.long)


def write(folder: str | Path, ids: torch.Tensor, coverage: float) -> dict:
    record = {"size": len(ids), "coverage_of_training_tokens": round(coverage, 4), "token_ids": ids.tolist()}
    (Path(folder) / VOCAB_FILE).write_text(json.dumps(record))
    return record


def from_corpus(folder: str | Path, size: int, work_dir: Path, roots: list[Path] | None = None) -> dict:
    """Write `draft_vocab.json` into a draft model's folder: the `size` tokens most frequent in the
    training split of a corpus of Python files (`roots`, this machine's by default), the corpus
    `train eagle` tokenizes."""
    from transformers import AutoConfig, AutoTokenizer

    from specserve.models.eagle_train import EagleTrainConfig
    from specserve.models.medusa_train import corpus_windows

    vocab_size = AutoConfig.from_pretrained(folder).vocab_size
    check_size(size, vocab_size)  # before tokenizing the corpus
    train, _ = corpus_windows(AutoTokenizer.from_pretrained(folder), work_dir, EagleTrainConfig(), roots)
    ids, coverage = frequent_tokens(train.tokens, vocab_size, size)
    return write(folder, ids, coverage)

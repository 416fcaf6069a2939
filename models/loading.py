"""Load a target or draft model by Hub id or local path through transformers' Auto classes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class LoadedModel:
    """A model with what the engine and the accounting need to know about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: str  # the Hub id or local path it was loaded from
    local_path: str  # where its files lie on disk (vLLM reports this as `root`)
    weight_bytes: int  # bytes read per forward for the weights (all parameters, as stored)
    non_embedding_params: int  # for FLOPs: 2 x this x tokens
    context_length: int  # max positions the model was configured for
    eos_token_ids: tuple[int, ...]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def resolve_device(device: str) -> str:
    """`auto` picks cuda when present; otherwise the name is passed through (`cpu`, `cuda`, `cuda:1`)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available")
    return device


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """Return (weight bytes, non-embedding parameter count); tied weights count once."""
    unique = {id(p): p for p in model.parameters()}.values()
    total_bytes = sum(p.numel() * p.element_size() for p in unique)
    embed = model.get_input_embeddings().weight
    return total_bytes, sum(p.numel() for p in unique) - embed.numel()


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i not in ids:
                ids.append(int(i))
    return tuple(ids)


def _local_path(path: str) -> str:
    if Path(path).is_dir():
        return str(Path(path).resolve())
    try:  # a Hub id: its snapshot folder in the local cache (no network: local_files_only)
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=True)
    except Exception:  # noqa: BLE001 - a missing snapshot is not an error here, only a missing root
        return path


def load_model(
    path: str,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load tokenizer and causal LM from a Hub id or local folder.

    `device="auto"` with CUDA present uses accelerate's `device_map="auto"`, which spreads a model
    larger than one GPU over the GPUs (and CPU) it finds.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    looks_local = path.startswith((".", "/", "~")) or Path(path).exists()
    if looks_local and not Path(path).expanduser().is_dir():
        raise ValueError(f"model path {path!r} is not a directory")
    path = str(Path(path).expanduser()) if looks_local else path
    torch_dtype = DTYPES[dtype]
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device == "auto" and torch.cuda.is_available():
        kwargs["device_map"] = "auto"
        target_device = None
    else:
        target_device = resolve_device(device)
    try:
        check_servable(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), path)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ValueError(f"could not load model {path!r}: {e}") from e
    if target_device is not None:
        model = model.to(target_device)
    model.eval()
    model.requires_grad_(False)
    weight_bytes, non_embedding = count_parameters(model)
    ctx = int(getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length)
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        path=path,
        local_path=_local_path(path),
        weight_bytes=weight_bytes,
        non_embedding_params=non_embedding,
        context_length=ctx,
        eos_token_ids=_eos_ids(model, tokenizer),
    )
    log.info(
        "loaded %s: %.1fM params (%.1fM non-embedding), %.1f MB, dtype=%s, context=%d",
        path,
        sum(p.numel() for p in model.parameters()) / 1e6,
        non_embedding / 1e6,
        weight_bytes / 1e6,
        dtype,
        ctx,
    )
    return loaded


def check_servable(config: PretrainedConfig, path: str) -> None:
    """Refuse, before any weights load, a model whose attention the engine cannot batch."""
    from specserve.decoding.attention import AttentionLayout, UnsupportedModel

    try:
        AttentionLayout.of(config)
    except UnsupportedModel as e:
        raise ValueError(f"cannot serve {path!r}: {e}") from None


def preflight(path: str, trust_remote_code: bool = False) -> None:
    """What `serve` checks before it starts: the model's config is one the engine can serve. A
    config that cannot be read here (a Hub id offline) is left to the load to report."""
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return
    check_servable(config, path)


def check_draft_compatible(target: LoadedModel, draft: LoadedModel) -> None:
    """Refuse a draft that cannot propose in the target's token space."""
    t_tok, d_tok = target.tokenizer, draft.tokenizer
    t_vocab, d_vocab = t_tok.get_vocab(), d_tok.get_vocab()
    if t_vocab != d_vocab:
        only_t = len(set(t_vocab.items()) - set(d_vocab.items()))
        only_d = len(set(d_vocab.items()) - set(t_vocab.items()))
        raise ValueError(
            f"draft {draft.path!r} has a different vocabulary from target {target.path!r} "
            f"(sizes {len(d_vocab)} vs {len(t_vocab)}; {only_t} target and {only_d} draft entries differ)"
        )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        t_id, d_id = getattr(t_tok, name), getattr(d_tok, name)
        if t_id != d_id:
            raise ValueError(f"draft {draft.path!r} has {name}={d_id}, target {target.path!r} has {t_id}")
    t_rows = target.model.get_output_embeddings().weight.shape[0]
    d_rows = draft.model.get_output_embeddings().weight.shape[0]
    if t_rows != d_rows:
        raise ValueError(
            f"draft {draft.path!r} has {d_rows} output logits, target {target.path!r} has {t_rows}"
        )


@dataclass
class Models:
    """What a command or the server loaded: the target, and the draft and Medusa heads if asked for."""

    target: LoadedModel
    draft: LoadedModel | None = None
    medusa: nn.Module | None = None  # MedusaHeads
    medusa_path: str | None = None
    eagle: nn.Module | None = None  # EagleHead


def eagle_precision(name: str, target_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The EAGLE head's dtype: as named, or for "auto" bfloat16 where the target runs in float32 on
    a CPU that computes bfloat16 natively (AVX512-BF16 or AMX), else the target's. A bfloat16 head
    reads half the bytes a forward (its lm_head is most of them) and is as lossless: on an AMD
    CPU whose L3 cannot hold target and head it made `eagle:4` 1.07-1.15x faster at batch 1 and
    1.3x at 4 and 16 (docs/batch-tradeoffs.md)."""
    if name != "auto":
        return DTYPES[name]
    if target_dtype != torch.float32 or device.type != "cpu":
        return target_dtype
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # (torch.cpu's, private)
    native = any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return torch.bfloat16 if native else target_dtype


def load_models(
    target: str,
    draft: str | None = None,
    medusa: str | None = None,
    eagle: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    eagle_dtype: str = "auto",
) -> Models:
    """Load a target and, where given, a draft (checked against the target), Medusa heads and an
    EAGLE head (refused unless trained for this target; at `eagle_dtype`: `eagle_precision`).

    Raises ValueError naming what does not fit."""
    from specserve.models import draft_vocab
    from specserve.models.eagle import EagleHead
    from specserve.models.medusa import MedusaHeads

    if eagle_dtype != "auto" and eagle_dtype not in DTYPES:
        raise ValueError(f"eagle_dtype={eagle_dtype!r} is not auto or one of {sorted(DTYPES)}")
    kw = {"dtype": dtype, "device": device, "trust_remote_code": trust_remote_code}
    loaded = load_model(target, **kw)
    drafted = load_model(draft, **kw) if draft else None
    if drafted is not None:
        check_draft_compatible(loaded, drafted)
        ids = draft_vocab.read(drafted.local_path)
        if ids is not None:  # (its folder's file; a Hub id's local snapshot's)
            drafted.weight_bytes -= draft_vocab.restrict_model(drafted.model, ids)
            log.info("draft %s proposes over %d tokens (%s)", draft, len(ids), draft_vocab.VOCAB_FILE)
    heads = MedusaHeads.load(medusa, loaded.model) if medusa else None
    eagle_head = None
    if eagle:
        head_dtype = eagle_precision(eagle_dtype, loaded.dtype, loaded.device)
        eagle_head = EagleHead.load(eagle, loaded.model, head_dtype)
        log.info("EAGLE head %s at %s (--eagle-dtype %s)", eagle, eagle_head.dtype, eagle_dtype)
    return Models(loaded, drafted, heads, medusa if heads is not None else None, eagle_head)

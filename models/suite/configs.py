"""Presets for the default-suite recipe: corpus, tokenizer, target, draft, distillation, evaluation.

`gpu` is the intended suite (a ~14M target, a ~2M draft, trained in a short GPU lease); `cpu` is the
best pair that trains on two CPU cores in under an hour (bundled when no GPU is at hand); `cpu-tiny`
runs the whole recipe in seconds and exists for tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaConfig


@dataclass(frozen=True)
class ModelShape:
    """A LlamaForCausalLM body; the vocabulary and context come from the preset."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    num_kv_heads: int | None = None  # None: as many as query heads (no GQA)

    def llama_config(self, vocab_size: int, context: int, bos: int, eos: int, pad: int) -> LlamaConfig:
        from transformers import LlamaConfig  # lazily: the CLI lists presets without loading transformers

        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads or self.num_heads,
            max_position_embeddings=context,
            tie_word_embeddings=True,  # the embedding is most of a small model's bytes: store it once
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
        )


@dataclass(frozen=True)
class TrainConfig:
    """One run of the training loop (plain LM training, or distillation with a teacher)."""

    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100  # steps between validation losses (and the last step)
    eval_windows: int = 16  # validation windows per periodic evaluation
    ckpt_every: int = 100  # steps between checkpoints (and the last step)
    seed: int = 0
    max_seconds: float | None = None  # wall-clock budget: fewer steps when `steps` would not fit


@dataclass(frozen=True)
class DistillConfig:
    """DistillSpec: the draft learns the target's distribution on text the target wrote itself."""

    num_sequences: int  # continuations the target writes (the distillation pool)
    prompt_len: int  # corpus tokens each continuation starts from
    new_tokens: int  # tokens the target adds to each prompt
    temperature: float  # target sampling temperature for the pool (0: greedy)
    gen_batch_size: int
    train: TrainConfig  # its seq_len must equal prompt_len + new_tokens


@dataclass(frozen=True)
class EvalConfig:
    val_windows: int  # windows of the validation split for the reported validation loss
    sample_windows: int  # of those, how many are shipped (val_sample.json) to re-check the loss
    accept_prompts: int  # held-out prompts for the draft's greedy acceptance rate
    prompt_len: int
    new_tokens: int
    num_speculative_tokens: int = 4
    batch_size: int = 8


@dataclass(frozen=True)
class Preset:
    name: str
    vocab_size: int
    context: int  # max_position_embeddings of both models
    tokenizer_sample_bytes: int  # train-split text the BPE trainer sees (a prefix in stable order)
    target: ModelShape
    draft: ModelShape
    target_train: TrainConfig
    draft_train: TrainConfig
    distill: DistillConfig
    eval: EvalConfig
    val_per_mille: int = 20  # files whose content hash falls below this (of 1000) go to validation
    max_file_bytes: int = 1_000_000  # larger .py files are generated tables, not code: skipped
    max_train_bytes: int | None = None  # a stable sample (by content hash) of the train split, at most this
    threads: int | None = None  # torch.set_num_threads on CPU (None: torch's default)
    cpu_bf16: bool = False  # bf16 autocast when training on a CPU with native bf16 (always on GPU)
    max_shard_bytes: str = "15MB"  # safetensors shards stay under the repository's 16 MB per file
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _tiny() -> Preset:
    tr = TrainConfig(
        steps=4, batch_size=2, seq_len=64, lr=3e-3, warmup_steps=1, eval_every=2, eval_windows=2, ckpt_every=2
    )
    return Preset(
        name="cpu-tiny",
        vocab_size=320,
        context=128,
        tokenizer_sample_bytes=200_000,
        target=ModelShape(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
        draft=ModelShape(hidden_size=16, num_layers=1, num_heads=1, intermediate_size=32),
        target_train=tr,
        draft_train=tr,
        distill=DistillConfig(
            num_sequences=4,
            prompt_len=16,
            new_tokens=16,
            temperature=0.8,
            gen_batch_size=4,
            train=TrainConfig(
                steps=2,
                batch_size=2,
                seq_len=32,
                lr=1e-3,
                warmup_steps=1,
                eval_every=2,
                eval_windows=2,
                ckpt_every=2,
            ),
        ),
        eval=EvalConfig(
            val_windows=4, sample_windows=2, accept_prompts=2, prompt_len=16, new_tokens=8, batch_size=2
        ),
        val_per_mille=200,
        threads=2,
        notes="Tests the recipe in seconds; the models know nothing.",
    )


def _cpu() -> Preset:
    # Two CPU cores (one when they are shared), under an hour for everything, bf16 autocast where the CPU
    # has it: a 5.5M target (4x256) sees 5.7M tokens, a 0.9M draft (one layer of 96: 6x fewer parameters,
    # ~30x fewer non-embedding FLOPs) sees 4.9M, then distils on 1024 target continuations.
    return Preset(
        name="cpu",
        vocab_size=8192,
        context=512,
        tokenizer_sample_bytes=24_000_000,
        target=ModelShape(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=768),
        draft=ModelShape(hidden_size=96, num_layers=1, num_heads=2, intermediate_size=256),
        target_train=TrainConfig(
            steps=1400,
            batch_size=8,
            seq_len=512,
            lr=2e-3,
            warmup_steps=50,
            eval_every=100,
            eval_windows=16,
            ckpt_every=50,
            seed=1,
        ),
        draft_train=TrainConfig(
            steps=1200,
            batch_size=8,
            seq_len=512,
            lr=3e-3,
            warmup_steps=50,
            eval_every=200,
            eval_windows=16,
            ckpt_every=100,
            seed=2,
        ),
        distill=DistillConfig(
            num_sequences=1024,
            prompt_len=64,
            new_tokens=192,
            temperature=0.7,
            gen_batch_size=64,
            train=TrainConfig(
                steps=400,
                batch_size=16,
                seq_len=256,
                lr=1e-3,
                warmup_steps=20,
                eval_every=100,
                eval_windows=16,
                ckpt_every=100,
                seed=3,
            ),
        ),
        eval=EvalConfig(val_windows=64, sample_windows=4, accept_prompts=32, prompt_len=128, new_tokens=64),
        threads=2,
        cpu_bf16=True,
        notes="Trained on 2 CPU cores (no GPU at hand); the gpu preset replaces it when one is.",
    )


def _gpu() -> Preset:
    # One GPU lease of ~8 minutes end to end (every training stage has a wall-clock budget; the card
    # records the steps each one got): a 13.7M target (6x384, context 1024) and a 1.9M draft (2x160:
    # two layers, so it can learn the copying that code is full of). The target stays small enough to
    # serve on two CPU cores and, in bf16, keeps the bundle near 35 MB.
    def budgeted(seconds: float, **kw: object) -> TrainConfig:
        return TrainConfig(
            steps=50_000,
            batch_size=32,
            eval_every=500,
            eval_windows=32,
            ckpt_every=1000,
            max_seconds=seconds,
            **kw,
        )

    return Preset(
        name="gpu",
        vocab_size=8192,
        context=1024,
        tokenizer_sample_bytes=60_000_000,
        target=ModelShape(hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1024),
        draft=ModelShape(hidden_size=160, num_layers=2, num_heads=2, intermediate_size=448),
        target_train=budgeted(180, seq_len=1024, lr=1.5e-3, warmup_steps=200, seed=1),
        draft_train=budgeted(55, seq_len=1024, lr=3e-3, warmup_steps=200, seed=2),
        distill=DistillConfig(
            num_sequences=2048,
            prompt_len=128,
            new_tokens=384,
            temperature=0.7,
            gen_batch_size=512,
            train=budgeted(45, seq_len=512, lr=1e-3, warmup_steps=100, seed=3),
        ),
        eval=EvalConfig(val_windows=128, sample_windows=4, accept_prompts=64, prompt_len=256, new_tokens=128),
        max_train_bytes=500_000_000,
        notes="Trained on one GPU in a short lease (bf16 autocast, a time budget per stage).",
    )


PRESETS: dict[str, Preset] = {p.name: p for p in (_gpu(), _cpu(), _tiny())}


def get_preset(name: str) -> Preset:
    """The named preset; a ValueError naming the value for anything else."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]

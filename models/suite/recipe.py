"""The default-suite recipe: corpus -> tokenizer -> target -> draft -> distillation -> evaluation -> card.

Every input is checked before any training starts (preset, output folder, corpus). Each stage leaves
its work in `work_dir` (shards, tokenizer, checkpoints, distillation pool), so a rerun with
resume=True picks up where an interrupted one stopped. Only the final models, the card, suite.json and
val_sample.json go to `out`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from specserve.models.suite import card, corpus, distill, evaluate, tokenizer
from specserve.models.suite.configs import ModelShape, Preset, TrainConfig, get_preset
from specserve.models.suite.train import TokenWindows, TrainResult, cpu_has_bf16, save_hf, train_loop

log = logging.getLogger(__name__)


def check_writable(path: Path) -> None:
    """Create `path` if needed and prove it writable; a ValueError naming it otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output folder {str(path)!r} is not writable: {e}") from e


def _model_entry(model: LlamaForCausalLM, shape: ModelShape, context: int, result: TrainResult) -> dict:
    params = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    embed = model.get_input_embeddings().weight.numel()
    return {
        "parameters": params,
        "non_embedding_parameters": params - embed,
        "num_layers": shape.num_layers,
        "hidden_size": shape.hidden_size,
        "context": context,
        "tokens_seen": result.tokens_seen,
        "steps": result.steps,
        "train_s": result.wall_s,
        "history": result.history,
    }


def _train_model(
    name: str,
    shape: ModelShape,
    cfg: TrainConfig,
    preset: Preset,
    ids: dict,
    train_tokens,
    val_windows,
    work_dir: Path,
    device: torch.device,
    resume: bool,
    data_id: str,
    bf16: bool,
) -> tuple[LlamaForCausalLM, TrainResult]:
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(shape.llama_config(preset.vocab_size, preset.context, **ids)).to(device)
    windows = TokenWindows(train_tokens, cfg.seq_len)
    result = train_loop(
        name,
        model,
        cfg,
        lambda step: windows.batch(cfg.seed, step, cfg.batch_size),
        val_windows[: cfg.eval_windows],
        work_dir / name,
        resume=resume,
        data_id=data_id,
        bf16=bf16,
    )
    return model, result


def _replace_folder(src_model, tok, dest: Path, max_shard: str) -> None:
    if dest.exists():
        shutil.rmtree(dest)  # stale shards of an earlier save must not linger
    save_hf(src_model, tok, dest, max_shard)


class StageClock:
    """Seconds per stage, kept in the work folder: a resumed run reports the work done before it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def record(self, name: str, seconds: float, did_work: bool = True) -> None:
        if did_work or name not in self.times:
            self.times[name] = round(seconds, 1)
            self.path.write_text(json.dumps(self.times, indent=2))


def _tokenize(preset: Preset, files: corpus.CorpusFiles, work_dir: Path, resume: bool, clock: StageClock):
    """Stages 1-2: the tokenizer (on a stable prefix of the train split), then both splits as shards."""
    t = time.perf_counter()
    tok_dir, meta_path = work_dir / "tokenizer", work_dir / "tokenizer" / "meta.json"
    meta = {
        "corpus": files.digest(),
        "vocab_size": preset.vocab_size,
        "sample": preset.tokenizer_sample_bytes,
    }
    reuse = resume and meta_path.is_file() and json.loads(meta_path.read_text()) == meta
    if reuse:
        log.info("tokenizer: reusing %s", tok_dir)
    else:
        texts = corpus.iter_texts(files.splits["train"], preset.tokenizer_sample_bytes)
        tokenizer.save_tokenizer(tokenizer.train_tokenizer(texts, preset.vocab_size), tok_dir, preset.context)
        meta_path.write_text(json.dumps(meta))
    tok = tokenizer.load_tokenizer(tok_dir)  # as a rerun sees it (its digest names the shards)
    clock.record("tokenizer_s", time.perf_counter() - t, did_work=not reuse)
    t = time.perf_counter()
    shard_dir = work_dir / "shards"
    before = (
        (shard_dir / "manifest.json").stat().st_mtime if (shard_dir / "manifest.json").is_file() else None
    )
    eot = tok.token_to_id(tokenizer.EOT)
    manifest = corpus.write_shards(files, tok, eot, shard_dir, tokenizer.tokenizer_digest(tok))
    clock.record(
        "corpus_s", time.perf_counter() - t, did_work=before != (shard_dir / "manifest.json").stat().st_mtime
    )
    return tok, manifest


def run_suite(
    preset_name: str,
    out: Path,
    *,
    corpus_dirs: list[Path] | None = None,
    work_dir: Path | None = None,
    resume: bool = True,
    device: str = "auto",
    threads: int | None = None,
) -> dict:
    """Run the whole recipe; returns the summary also written to out/suite.json."""
    preset = get_preset(preset_name)
    out = Path(out)
    work_dir = Path(work_dir) if work_dir is not None else Path("runs") / f"suite-{preset.name}"
    check_writable(out)
    check_writable(work_dir)
    roots = [Path(d) for d in corpus_dirs] if corpus_dirs else corpus.default_roots()
    files = corpus.collect_files(  # before any training
        roots, preset.val_per_mille, preset.max_file_bytes, preset.max_train_bytes
    )
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu" and (threads or preset.threads):
        torch.set_num_threads(threads or preset.threads)
    bf16 = dev.type == "cuda" or (preset.cpu_bf16 and cpu_has_bf16())  # matmuls in bf16 while training
    clock = StageClock(work_dir / "stage_times.json")
    log.info("suite %s: out=%s work=%s device=%s bf16=%s", preset.name, out, work_dir, dev, bf16)

    tok, manifest = _tokenize(preset, files, work_dir, resume, clock)
    fast = tokenizer.wrap(tok, preset.context)
    eot, pad = tok.token_to_id(tokenizer.EOT), tok.token_to_id(tokenizer.PAD)
    ids = {"bos": eot, "eos": eot, "pad": pad}
    data_id = tokenizer.tokenizer_digest(tok) + files.digest()  # resume only over the same tokens
    train_tokens = corpus.load_split(work_dir / "shards", "train")
    val = TokenWindows(corpus.load_split(work_dir / "shards", "validation"), preset.target_train.seq_len)
    val_windows = evaluate.val_sample(val, preset.eval)  # [val_windows, T]

    # 3. target, 4. draft: the same loop, the same data, different shapes and seeds
    results, models = {}, {}
    for name, shape, cfg in (
        ("target", preset.target, preset.target_train),
        ("draft", preset.draft, preset.draft_train),
    ):
        models[name], results[name] = _train_model(
            name, shape, cfg, preset, ids, train_tokens, val_windows, work_dir, dev, resume, data_id, bf16
        )
        _replace_folder(models[name], fast, out / name, preset.max_shard_bytes)
        clock.record(f"{name}_s", results[name].wall_s)

    # 5. acceptance of the corpus-trained draft, 6. DistillSpec, kept only if acceptance rises
    t = time.perf_counter()
    prompts = evaluate.acceptance_prompts(val, preset.eval)
    bundled_target = evaluate.load_float32(out / "target").to(dev)
    draft_before = evaluate.load_float32(out / "draft").to(dev)
    before = evaluate.measure_acceptance(bundled_target, draft_before, prompts, preset.eval, eot)
    clock.record("acceptance_before_s", time.perf_counter() - t)
    t = time.perf_counter()
    pool_path = work_dir / "distill" / "pool.pt"
    if not resume or any(r.steps > r.resumed_from for r in results.values()):  # new target or draft
        pool_path.unlink(missing_ok=True)
        (work_dir / "distill" / "ckpt.pt").unlink(missing_ok=True)
    pool_reused = pool_path.is_file()
    pool = distill.build_pool(
        models["target"], TokenWindows(train_tokens, preset.distill.prompt_len), preset.distill, pool_path
    )
    clock.record("distill_pool_s", time.perf_counter() - t, did_work=not pool_reused)
    distill_res = distill.distill_draft(
        models["target"],
        models["draft"],
        pool,
        preset.distill,
        val_windows[: preset.distill.train.eval_windows],
        work_dir / "distill",
        resume=resume,
        data_id=data_id,
        bf16=bf16,
    )
    clock.record("distill_s", distill_res.wall_s)
    t = time.perf_counter()
    _replace_folder(models["draft"], fast, work_dir / "draft_distilled", preset.max_shard_bytes)
    draft_after = evaluate.load_float32(work_dir / "draft_distilled").to(dev)
    after = evaluate.measure_acceptance(bundled_target, draft_after, prompts, preset.eval, eot)
    keep = after.acceptance_rate > before.acceptance_rate
    if keep:
        shutil.rmtree(out / "draft")
        shutil.copytree(work_dir / "draft_distilled", out / "draft")
    clock.record("acceptance_after_s", time.perf_counter() - t)

    # 7. losses of the bundled models (bf16 weights loaded in float32), 8. the card
    t = time.perf_counter()
    entries = {}
    for name, shape in (("target", preset.target), ("draft", preset.draft)):
        model = bundled_target if name == "target" else (draft_after if keep else draft_before)
        entries[name] = _model_entry(model, shape, preset.context, results[name])
        entries[name] |= evaluate.model_losses(
            model, val_windows, preset.eval.sample_windows, preset.target_train.batch_size
        )
        entries[name]["decode_step_ms"] = evaluate.decode_step_ms(model)  # batch 1, 128 cached tokens
    if keep:
        for key, extra in (
            ("tokens_seen", distill_res.tokens_seen),
            ("train_s", distill_res.wall_s),
            ("steps", distill_res.steps),
        ):
            entries["draft"][key] += extra
    evaluate.write_val_sample(val_windows[: preset.eval.sample_windows], out / "val_sample.json")
    clock.record("eval_s", time.perf_counter() - t)
    summary = card.summarize(
        preset, dev, clock, tok, manifest, entries, val_windows, before, after, keep, distill_res
    )
    summary["training_precision"] = "bf16 autocast, float32 weights" if bf16 else "float32"
    card.write_card(out, summary)
    log.info(
        "suite %s done, %.1f min of work: val loss target %.4f, draft %.4f; acceptance %.3f -> %.3f (%s)",
        preset.name,
        summary["wall_s"] / 60,
        entries["target"]["val_loss"],
        entries["draft"]["val_loss"],
        before.acceptance_rate,
        after.acceptance_rate,
        summary["acceptance"]["kept"],
    )
    return summary

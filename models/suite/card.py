"""The model card (README.md) and its machine-readable twin (suite.json) for a trained suite."""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

import torch
import transformers

from specserve.models.suite import tokenizer

log = logging.getLogger(__name__)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"1x {torch.cuda.get_device_name(device)}"
    n = torch.get_num_threads()
    return f"{n} CPU thread{'' if n == 1 else 's'} ({platform.machine()}, {os.cpu_count()} cores visible)"


def summarize(
    preset, dev, clock, tok, manifest, entries, val_windows, before, after, keep, distill_res
) -> dict:
    """What suite.json and the card say of a finished recipe run."""
    verdict = "kept: acceptance rose" if keep else "not kept: acceptance did not rise"
    return {
        "preset": preset.to_dict(),
        "hardware": hardware(dev),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "wall_s": sum(clock.times.values()),  # work done, summed over resumed runs
        "stages": dict(clock.times),
        "tokenizer": {
            "vocab_size": tok.get_vocab_size(),
            "eot_id": tok.token_to_id(tokenizer.EOT),
            "pad_id": tok.token_to_id(tokenizer.PAD),
        },
        "corpus": {k: manifest[k] for k in ("roots", "digest", "skipped", "splits")},
        "models": entries,
        "eval": {
            "val_windows": len(val_windows),
            "seq_len": val_windows.shape[1],
            "sample_windows": preset.eval.sample_windows,
        },
        "acceptance": {
            "before": before.to_dict(),
            "after": after.to_dict(),
            "kept": "distilled" if keep else "corpus-trained",
        },
        "distill": {
            "summary": f"{distill_res.steps} steps, {distill_res.tokens_seen / 1e6:.2f}M tokens of "
            f"{preset.distill.num_sequences} target continuations (temperature "
            f"{preset.distill.temperature}), forward KL; acceptance {before.acceptance_rate:.3f} -> "
            f"{after.acceptance_rate:.3f}, {verdict}",
            "result": distill_res.to_dict(),
        },
    }


def write_card(out: Path, summary: dict) -> None:
    """Write suite.json (everything) and README.md (the same, for people)."""
    summary = dict(summary)
    summary["bundle_bytes"] = {n: _folder_bytes(out / n) for n in ("target", "draft") if (out / n).is_dir()}
    (out / "suite.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "README.md").write_text(render(summary))
    log.info("model card written to %s", out / "README.md")


def render(s: dict) -> str:
    preset, corpus, models, acc = s["preset"], s["corpus"], s["models"], s["acceptance"]
    tr, va = corpus["splits"]["train"], corpus["splits"]["validation"]
    ev, b, sizes = s["eval"], acc["before"], s["bundle_bytes"]
    lines = [
        "# specserve default suite: a Python-code target and draft",
        "",
        f"Trained here from scratch by `specserve train suite --preset {preset['name']}` "
        f"({s['hardware']}, {s['wall_s'] / 60:.1f} min end to end, torch {s['torch']}, "
        f"transformers {s['transformers']}). {preset['notes']}",
        "",
        "Both models are `LlamaForCausalLM` with tied embeddings, stored in bf16 safetensors, sharing one",
        f"byte-level BPE tokenizer of {s['tokenizer']['vocab_size']} tokens (`<|endoftext|>` separates files",
        "and is bos/eos; `<|pad|>` pads; decoding returns the exact source, whitespace included).",
        "They write Python, nothing else: a small demonstration pair for speculative decoding,",
        "not an assistant.",
        "",
        "## Models",
        "",
        "| | parameters | non-embedding | layers x hidden | context | tokens seen | steps | train time | "
        "val loss (nats/token) | batch-1 decode forward |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("target", "draft"):
        m = models[name]
        lines.append(
            f"| {name} | {m['parameters'] / 1e6:.2f}M | {m['non_embedding_parameters'] / 1e6:.2f}M | "
            f"{m['num_layers']} x {m['hidden_size']} | {m['context']} | {m['tokens_seen'] / 1e6:.2f}M | "
            f"{m['steps']} | {m['train_s'] / 60:.1f} min | {m['val_loss']:.4f} | "
            f"{m.get('decode_step_ms', float('nan')):.2f} ms |"
        )
    d = s["distill"]
    lines += [
        "",
        f"Validation loss: mean next-token cross-entropy on {ev['val_windows']} evenly spaced windows of "
        f"{ev['seq_len']} tokens of the validation split, measured on the bundled bf16 weights loaded in "
        "float32. `val_sample.json` ships the token ids of the first "
        f"{ev['sample_windows']} of those windows; their loss is `val_sample_loss` in `suite.json` "
        "(re-checked by the tests). Batch-1 decode forward: median time of one new token over 128 cached "
        "tokens, float32, on the training hardware: what a draft step costs against a target step.",
        "",
        "## Draft acceptance (greedy, through the specserve engine)",
        "",
        f"{b['prompts']} held-out prompts of {b['prompt_len']} tokens from the validation "
        f"split, {b['new_tokens']} new tokens each, K = {b['num_speculative_tokens']} "
        "draft tokens per step; acceptance = accepted / drafted tokens summed over all requests.",
        "",
        "| draft | acceptance rate | tokens per target forward |",
        "|---|---|---|",
        f"| trained on the corpus | {b['acceptance_rate']:.3f} | {b['tokens_per_forward']:.2f} |",
    ]
    if acc.get("after") is not None:
        lines.append(
            f"| distilled (DistillSpec) | {acc['after']['acceptance_rate']:.3f} | "
            f"{acc['after']['tokens_per_forward']:.2f} |"
        )
    lines += [
        "",
        f"Distillation: {d['summary']}. Bundled draft: **{acc['kept']}**.",
        "",
        "## Time",
        "",
        f"Hardware: {s['hardware']}; training precision: {s.get('training_precision', 'float32')}.",
        "",
        "| stage | minutes |",
        "|---|---|",
        *[f"| {k.removesuffix('_s')} | {v / 60:.1f} |" for k, v in s["stages"].items()],
        f"| **total** | **{s['wall_s'] / 60:.1f}** |",
        "",
        "## Corpus",
        "",
        "Every `.py` file of the training machine's Python standard library and site-packages "
        "(roots: " + ", ".join(f"`{r}`" for r in corpus["roots"]) + "), deduplicated by content hash "
        f"and split by that hash into train/validation. Corpus digest `{corpus['digest'][:16]}`.",
        "",
        "| split | files | MB | tokens |",
        "|---|---|---|---|",
        f"| train | {tr['files']} | {_mb(tr['bytes'])} | {tr['tokens'] / 1e6:.1f}M |",
        f"| validation | {va['files']} | {_mb(va['bytes'])} | {va['tokens'] / 1e6:.1f}M |",
        "",
        "Skipped files: " + ", ".join(f"{k} {v}" for k, v in corpus["skipped"].items()) + ".",
        "The corpus itself is not part of the repository; the recipe rebuilds it from whatever is installed,",
        "so another machine (or another set of installed packages) gives another digest and other numbers.",
        "",
        "## Files",
        "",
        f"target {_mb(sizes.get('target', 0))} MB, draft {_mb(sizes.get('draft', 0))} MB "
        "(Hugging Face folders: config.json, generation_config.json, safetensors, tokenizer files); "
        "`suite.json` holds every number above; `val_sample.json` the shipped validation windows.",
        "",
        "Use: every `specserve` command serves this pair when no model is named; or load either folder with "
        "`AutoTokenizer` / `AutoModelForCausalLM.from_pretrained` (no network needed).",
        "",
        "Reproduce: `specserve train suite --preset " + preset["name"] + " --out models/default_suite`.",
        "",
    ]
    return "\n".join(lines)

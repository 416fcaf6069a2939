"""A server with an EAGLE head: its default method answers concurrent requests exactly as plain
greedy decoding does, and /v1/models-side info names the head."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from live_harness import serving
from tiny_models import random_eagle


def test_eagle_server_matches_plain_decoding(tiny_paths, tiny, reference, tmp_path):
    head_dir = tmp_path / "eagle"
    random_eagle(tiny["target"].model).save(head_dir)
    g = torch.Generator().manual_seed(3)
    vocab = tiny["target"].model.config.vocab_size
    prompts = [torch.randint(2, vocab, (n,), generator=g).tolist() for n in (4, 11, 7, 16, 2, 9)]
    with serving(tiny_paths, eagle=str(head_dir), method="eagle") as server, server.http() as client:
        assert server.state.engine.methods[-1] == "eagle"

        def ask(ids: list[int]) -> dict:
            body = {"prompt_token_ids": ids, "max_tokens": 20, "num_speculative_tokens": 3}
            r = client.post("/generate", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(ask, prompts))
    for ids, res in zip(prompts, results, strict=True):
        assert res["token_ids"] == reference(ids, 20)[0]
        assert res["stats"]["method"] == "eagle"
    assert sum(r["stats"]["draft_tokens"] for r in results) > 0

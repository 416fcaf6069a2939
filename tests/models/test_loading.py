from __future__ import annotations

import pytest
import torch

from specserve.models.loading import count_parameters, eagle_precision, load_model


def test_weight_bytes_and_non_embedding_params_by_hand(tiny_paths):
    m = load_model(tiny_paths["target"], dtype="float32")
    cfg = m.model.config
    h, i, n_layers, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h  # q, o; k, v; gate/up/down; two norms
    non_embedding = n_layers * per_layer + h + V * h  # + final norm + untied lm_head
    assert m.non_embedding_params == non_embedding
    assert m.weight_bytes == 4 * (non_embedding + V * h)
    assert m.context_length == 192 and m.eos_token_ids == (m.tokenizer.eos_token_id,)


@pytest.mark.parametrize("dtype,torch_dtype", [("float64", torch.float64), ("bfloat16", torch.bfloat16)])
def test_dtype_and_device(tiny_paths, dtype, torch_dtype):
    m = load_model(tiny_paths["draft"], dtype=dtype, device="auto")
    assert m.dtype == torch_dtype and m.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert m.weight_bytes == count_parameters(m.model)[0]
    assert m.local_path.endswith("draft") and not m.model.training


def test_bad_inputs_are_clear(tiny_paths, tmp_path):
    with pytest.raises(ValueError, match="dtype='int8'"):
        load_model(tiny_paths["target"], dtype="int8")
    with pytest.raises(ValueError, match="is not a directory"):
        load_model(str(tmp_path / "missing"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model(tiny_paths["target"], device="cuda")


@pytest.mark.parametrize(
    "name,target,device,native,expected",
    [
        ("auto", torch.float32, "cpu", True, torch.bfloat16),  # half the bytes a head forward reads
        ("auto", torch.float32, "cpu", False, torch.float32),  # no bfloat16 units: emulated, slower
        ("auto", torch.float64, "cpu", True, torch.float64),  # (the tests' targets: left as they are)
        ("auto", torch.float32, "cuda", True, torch.float32),
        ("float32", torch.float32, "cpu", True, torch.float32),  # named: as named
        ("bfloat16", torch.float64, "cpu", False, torch.bfloat16),
    ],
)
def test_eagle_precision(monkeypatch, name, target, device, native, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native, raising=False)
    assert eagle_precision(name, target, torch.device(device)) == expected

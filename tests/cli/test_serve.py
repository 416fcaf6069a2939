"""`specserve serve`: flags become Settings (over SPECSERVE_* variables), with a clear SystemExit
message for anything wrong, and the app goes to uvicorn."""

from __future__ import annotations

import pytest

from specserve.cli.main import build_parser, main
from specserve.cli.serve import settings_from_args
from specserve.server import settings as settings_module


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No SPECSERVE_* variable from the outside, and no bundled suite to fall back on."""
    import os

    for name in [n for n in os.environ if n.startswith("SPECSERVE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(settings_module, "default_suite", lambda: None)


def _serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_flags_become_settings(tiny_paths):
    args = _serve_args(
        "--target", tiny_paths["target"], "--draft", tiny_paths["draft"], "--method", "ngram",
        "--num-speculative-tokens", "5", "--max-batch-size", "4", "--max-waiting", "0",
        "--dtype", "float64", "--port", "0", "--api-key", "k", "--trust-remote-code",
        "--request-timeout-s", "2.5", "--max-body-bytes", "4096", "--served-model-name", "m",
        "--no-idle-warm-up",
    )  # fmt: skip
    s = settings_from_args(args)
    default = settings_from_args(_serve_args("--target", tiny_paths["target"]))
    assert not s.idle_warm_up and default.idle_warm_up
    assert (s.method, s.num_speculative_tokens, s.max_batch_size, s.max_waiting) == ("ngram", 5, 4, 0)
    assert (s.dtype, s.port, s.request_timeout_s, s.max_body_bytes) == ("float64", 0, 2.5, 4096)
    assert s.api_key is not None and s.api_key.get_secret_value() == "k"
    assert s.trust_remote_code and s.model_name == "m"


def test_flags_override_environment(monkeypatch, tiny_paths):
    monkeypatch.setenv("SPECSERVE_TARGET", tiny_paths["target"])
    monkeypatch.setenv("SPECSERVE_MAX_BATCH_SIZE", "3")
    assert settings_from_args(_serve_args()).max_batch_size == 3
    assert settings_from_args(_serve_args("--max-batch-size", "5")).max_batch_size == 5
    sched = '{"draft": {"1": 3, "9": 0}}'
    assert settings_from_args(_serve_args("--speculation-schedule", sched)).speculation_schedule == {
        "draft": {1: 3, 9: 0}
    }


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max-batch-size", "0"], "error: max_batch_size: Input should be greater than or equal to 1"),
        (["--num-speculative-tokens", "17"], "error: num_speculative_tokens: Input should be less than or"),
        (["--method", "draft"], "method 'draft' needs a draft model: pass --draft"),
        (["--dtype", "float8"], "error: dtype: Input should be 'float32', 'float64', 'bfloat16' or"),
        (["--port", "http"], "error: port: Input should be a valid integer"),
        (
            ["--speculation-schedule", '{"draft": {"2": 3}}'],
            "error: speculation_schedule: .*start at batch size 1",
        ),
        (
            ["--max-body-bytes", "10", "--max-waiting", "-1"],
            "max_waiting: .*; max_body_bytes: ",
        ),  # all at once
    ],
)
def test_bad_flags_exit_with_a_clear_message(tiny_paths, argv, message):
    with pytest.raises(SystemExit, match=message) as e:
        settings_from_args(_serve_args("--target", tiny_paths["target"], *argv))
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ")
    assert "Traceback" not in e.value.code and "pydantic" not in e.value.code


def test_serve_without_a_model_exits_clearly():
    with pytest.raises(SystemExit, match="no target model: pass --target"):
        main(["serve"])


def test_serve_hands_the_app_to_uvicorn(monkeypatch, tiny_paths):
    import uvicorn

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["serve", "--target", tiny_paths["target"], "--host", "127.0.0.1", "--port", "0",
                 "--log-level", "WARNING"]) == 0  # fmt: skip
    assert (seen["host"], seen["port"], seen["log_level"]) == ("127.0.0.1", 0, "warning")
    assert set(seen["app"].openapi()["paths"]) >= {"/health", "/v1/models", "/v1/completions", "/generate"}

"""Server settings: cross-field rules, bounds, SPECSERVE_* variables."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from specserve.server import settings as settings_module
from specserve.server.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No SPECSERVE_* variable from the outside, and no bundled suite to fall back on."""
    import os

    for name in [n for n in os.environ if n.startswith("SPECSERVE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(settings_module, "default_suite", lambda: None)


def test_method_draft_needs_a_draft(tiny_paths):
    with pytest.raises(ValidationError, match="method 'draft' needs a draft model: pass --draft"):
        Settings(target=tiny_paths["target"], method="draft")


def test_default_method_follows_the_models(tiny_paths):
    t, d = tiny_paths["target"], tiny_paths["draft"]
    assert Settings(target=t).method == "none"
    assert Settings(target=t, draft=d).method == "draft"
    assert Settings(target=t, draft=d, method="ngram").method == "ngram"
    assert Settings(target=t).model_name == t
    assert Settings(target=t, served_model_name="m").model_name == "m"


def test_no_target_and_no_suite_says_so():
    with pytest.raises(ValidationError, match="no target model: pass --target"):
        Settings()


def test_the_bundled_suite_is_the_default(monkeypatch, tiny_paths):
    suite = {"target": tiny_paths["target"], "draft": tiny_paths["draft"]}
    monkeypatch.setattr(settings_module, "default_suite", lambda: suite)
    s = Settings()
    assert (s.target, s.draft, s.method) == (suite["target"], suite["draft"], "draft")
    assert s.model_name == "specserve-default-suite"


@pytest.mark.parametrize(
    "field,bad,good",
    [
        ("num_speculative_tokens", [0, 17, -1], [1, 16]),
        ("max_batch_size", [0, 513], [1, 512]),
        ("max_waiting", [-1], [0, 100_000]),
        ("port", [-1, 65536], [0, 65535]),
        ("max_body_bytes", [0, 1023], [1024]),
        ("request_timeout_s", [0, -1.0], [0.5]),
        ("shutdown_timeout_s", [-1], [0]),
        ("threads", [-1], [0, 2]),
        ("dtype", ["float8", "fp32"], ["float64", "bfloat16"]),
        ("eagle_dtype", ["float8", None], ["auto", "bfloat16"]),
        ("method", ["beam", "eagle"], ["none", "ngram"]),
    ],
)
def test_bounds(tiny_paths, field, bad, good):
    for value in bad:
        with pytest.raises(ValidationError, match=field):
            Settings(target=tiny_paths["target"], **{field: value})
    for value in good:
        assert getattr(Settings(target=tiny_paths["target"], **{field: value}), field) == value


def test_a_speculation_schedule_is_json_or_a_json_file(monkeypatch, tmp_path, tiny_paths):
    text = '{"draft": {"9": 0, "1": 3, "5": 1}, "*": {"1": 2}}'
    s = Settings(target=tiny_paths["target"], speculation_schedule=text)
    assert s.speculation_schedule == {"draft": {1: 3, 5: 1, 9: 0}, "*": {1: 2}}
    assert list(s.speculation_schedule["draft"]) == [1, 5, 9]  # sorted: the engine reads it in order
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"medusa": {"1": 4}}))
    assert Settings(target=tiny_paths["target"], speculation_schedule=str(path)).speculation_schedule == {
        "medusa": {1: 4}
    }
    monkeypatch.setenv("SPECSERVE_SPECULATION_SCHEDULE", str(path))  # a path, not JSON, in a variable
    assert Settings(target=tiny_paths["target"]).speculation_schedule == {"medusa": {1: 4}}


@pytest.mark.parametrize(
    "bad,message",
    [
        ('{"draft": {"2": 3}}', "start at batch size 1"),
        ('{"draft": {"1": -1}}', "greater than or equal to 0"),
        ("[1, 2]", "valid dictionary"),
        ('{"draft": 3}', "valid dictionary"),
        ('{"draft": {}}', "start at batch size 1"),
        ("{}", "expected a method"),
        ("{not json", "Expecting property name"),
    ],
)
def test_bad_speculation_schedules_are_refused_with_a_message(tiny_paths, bad, message):
    with pytest.raises(ValidationError, match=message):
        Settings(target=tiny_paths["target"], speculation_schedule=bad)


def test_unknown_setting_is_refused(tiny_paths):
    with pytest.raises(ValidationError, match="max_batch"):
        Settings(target=tiny_paths["target"], max_batch=3)


def test_environment_variables_are_read(monkeypatch, tiny_paths):
    env = {
        "SPECSERVE_TARGET": tiny_paths["target"],
        "SPECSERVE_DRAFT": tiny_paths["draft"],
        "SPECSERVE_MAX_BATCH_SIZE": "3",
        "SPECSERVE_NUM_SPECULATIVE_TOKENS": "7",
        "SPECSERVE_DTYPE": "float64",
        "SPECSERVE_API_KEY": "s3cret",
        "SPECSERVE_PORT": "9001",
        "SPECSERVE_TRUST_REMOTE_CODE": "true",
        "SPECSERVE_LOG_LEVEL": "debug",  # read by the CLI, not a setting: must not break Settings
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert (s.target, s.draft, s.method) == (tiny_paths["target"], tiny_paths["draft"], "draft")
    assert (s.max_batch_size, s.num_speculative_tokens, s.dtype, s.port) == (3, 7, "float64", 9001)
    assert s.trust_remote_code is True
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)  # a secret stays out of logs
    monkeypatch.setenv("SPECSERVE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match="max_batch_size"):
        Settings()


def test_thread_candidates_fixed_or_measured():
    from specserve.server.threads import thread_candidates

    assert thread_candidates(0, "cpu", cores=8) == (1, 2, 4, 7, 8)
    assert thread_candidates(0, "cpu", cores=2) == (1, 2)
    assert thread_candidates(0, "cpu", cores=1) == (1,)
    assert thread_candidates(3, "cpu", cores=8) == (3,)  # --threads: fixed
    assert thread_candidates(0, "cuda", cores=8) == ()  # torch's default

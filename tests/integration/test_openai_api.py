"""The OpenAI API through Ray Serve, with the official `openai` client, on both data paths
(colocated, prefill -> decode). Every answer equals vLLM's own OpenAI server's answer to
the same request on the same model: text, token ids, logprobs, finish reasons, usage.
vLLM's server is one plain vLLM engine, so for greedy requests this is the greedy oracle."""

from __future__ import annotations

import openai
import pytest
import ray

from policies.routing import DataPath
from tests.integration.openai_compare import assert_same, joined_stream, normalized

pytestmark = pytest.mark.engine

MODEL = "tide-tiny"
PATHS = [DataPath.COLOCATED, DataPath.DISAGGREGATED]
LONG_PROMPT = " ".join(f"item{i} costs {i * 7 % 13} coins;" for i in range(60))

COMPLETIONS = {
    "greedy": dict(prompt="The quick brown fox", max_tokens=24, temperature=0),
    "long-prompt": dict(prompt=LONG_PROMPT, max_tokens=16, temperature=0),
    "logprobs": dict(prompt="hello world", max_tokens=8, temperature=0, logprobs=3),
    "prompt-logprobs": dict(prompt="hello world", max_tokens=4, temperature=0, logprobs=1,
                            extra_body={"prompt_logprobs": 2}),
    "stop-string": dict(prompt="hello world", max_tokens=30, temperature=0, stop=["4"]),
    "stop-string-kept": dict(prompt="hello world", max_tokens=30, temperature=0, stop=["4"],
                             extra_body={"include_stop_str_in_output": True}),
    "seeded-n": dict(prompt="Once upon a time", max_tokens=12, temperature=0.9, top_p=0.9, seed=7, n=3),
    "batch": dict(prompt=["first prompt", "a second, longer prompt"], max_tokens=6, temperature=0),
    "echo": dict(prompt="echo me", max_tokens=5, temperature=0, echo=True),
}

CHATS = {
    "greedy": dict(messages=[{"role": "user", "content": "Say hello"}], max_tokens=20, temperature=0),
    "system-and-turns": dict(messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Count to three"},
        {"role": "assistant", "content": "1 2 3"},
        {"role": "user", "content": "Again"},
    ], max_tokens=16, temperature=0),
    "logprobs": dict(messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0,
                     logprobs=True, top_logprobs=2),
    "seeded-n": dict(messages=[{"role": "user", "content": "tell a story"}], max_tokens=10,
                     temperature=1.0, seed=3, n=2),
}


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _with_token_ids(case: dict) -> dict:
    return {"model": MODEL, **case, "extra_body": {"return_token_ids": True, **case.get("extra_body", {})}}


@pytest.fixture(scope="module")
def reference(reference_url) -> openai.OpenAI:
    return _client(reference_url)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.value)
@pytest.mark.parametrize("case", COMPLETIONS)
def test_completion_equals_vllm_server(case, path, openai_urls, reference):
    request = _with_token_ids(COMPLETIONS[case])
    tide = _client(openai_urls[path]).completions.create(**request)
    assert tide.choices[0].text, "an empty answer proves nothing"
    assert_same(normalized(tide), normalized(reference.completions.create(**request)))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.value)
@pytest.mark.parametrize("case", CHATS)
def test_chat_equals_vllm_server(case, path, openai_urls, reference):
    request = _with_token_ids(CHATS[case])
    tide = _client(openai_urls[path]).chat.completions.create(**request)
    assert tide.choices[0].message.content
    assert_same(normalized(tide), normalized(reference.chat.completions.create(**request)))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.value)
def test_streamed_completion_equals_vllm_server(path, openai_urls, reference):
    request = dict(model=MODEL, prompt="Streaming, token by token,", max_tokens=40, temperature=0, n=1,
                   stream=True, stream_options={"include_usage": True}, stop=[" 9"])
    tide = joined_stream(list(_client(openai_urls[path]).completions.create(**request)))
    assert tide["texts"][0]
    assert tide == joined_stream(list(reference.completions.create(**request)))
    assert tide["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.value)
def test_streamed_chat_equals_vllm_server(path, openai_urls, reference):
    request = dict(model=MODEL, messages=[{"role": "user", "content": "stream a reply"}], max_tokens=48,
                   temperature=0, stream=True, stream_options={"include_usage": True})
    tide = joined_stream(list(_client(openai_urls[path]).chat.completions.create(**request)))
    assert tide["usage"]["completion_tokens"] == 48
    assert tide == joined_stream(list(reference.chat.completions.create(**request)))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.value)
def test_greedy_tokens_equal_the_oracle(path, openai_urls, oracle):
    """The same check against the session's plain-engine oracle, on a prompt long enough
    to span several KV blocks."""
    answer = _client(openai_urls[path]).completions.create(
        model=MODEL, prompt=LONG_PROMPT, max_tokens=40, temperature=0,
        extra_body={"return_token_ids": True, "ignore_eos": True},
    )
    choice = answer.choices[0]
    assert choice.token_ids == ray.get(oracle.greedy.remote(choice.prompt_token_ids, 40))
    assert answer.usage.completion_tokens == 40


def test_models_lists_the_model_with_its_path(openai_urls, tiny_model):
    models = _client(openai_urls[DataPath.DISAGGREGATED]).models.list().data
    assert [(m.id, m.root) for m in models] == [(MODEL, tiny_model)]

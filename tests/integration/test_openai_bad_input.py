"""Bad input over HTTP: an OpenAI error object with the right 4xx status and a message that
says what to fix, the same answer vLLM's own server gives, and nothing lost: the app
serves the next request normally."""

from __future__ import annotations

import httpx
import pytest

from policies.routing import DataPath

pytestmark = pytest.mark.engine

MODEL = "tide-tiny"
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
TOO_LONG = "lorem ipsum " * 3000  # well past max_model_len (2048 tokens)

CASES = {
    "malformed-json": (COMPLETIONS, b'{"model": "tide-tiny", "prompt": '),
    "body-not-an-object": (COMPLETIONS, b"[1, 2, 3]"),
    "prompt-wrong-type": (COMPLETIONS, {"model": MODEL, "prompt": {"text": "hi"}}),
    "max-tokens-wrong-type": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": "ten"}),
    "messages-wrong-type": (CHAT, {"model": MODEL, "messages": "hi"}),
    "unknown-model": (COMPLETIONS, {"model": "gpt-unknown", "prompt": "hi"}),
    "unknown-model-chat": (CHAT, {"model": "gpt-unknown", "messages": [{"role": "user", "content": "hi"}]}),
    "empty-prompt": (COMPLETIONS, {"model": MODEL, "prompt": ""}),
    "empty-messages": (CHAT, {"model": MODEL, "messages": []}),
    "prompt-longer-than-context": (COMPLETIONS, {"model": MODEL, "prompt": TOO_LONG, "max_tokens": 4}),
    "chat-longer-than-context": (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": TOO_LONG}]}),
    "max-tokens-zero": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 0}),
    "max-tokens-negative": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": -5}),
    "max-tokens-too-large": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 1_000_000}),
    "chat-max-tokens-too-large": (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                         "max_completion_tokens": 1_000_000}),
    "negative-temperature": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "temperature": -1}),
    "top-p-out-of-range": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "top_p": 1.5}),
    "n-zero": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "n": 0}),
    "n-negative-chat": (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": -2}),
    "greedy-with-n": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "n": 2, "temperature": 0}),
    "too-many-logprobs": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "logprobs": 1000}),
    "unsupported-suffix": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "suffix": "tail"}),
    "stream-options-without-stream": (COMPLETIONS, {"model": MODEL, "prompt": "hi",
                                                    "stream_options": {"include_usage": True}}),
    "tools-without-tool-parser": (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                         "tools": [{"type": "function", "function": {"name": "f"}}],
                                         "tool_choice": "auto"}),
    "presence-penalty-out-of-range": (COMPLETIONS, {"model": MODEL, "prompt": "hi", "presence_penalty": 9}),
}


def _post(base_url: str, route: str, body) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(base_url + route, content=body, headers={"content-type": "application/json"}, timeout=60)
    return httpx.post(base_url + route, json=body, timeout=60)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_a_clear_4xx_like_vllms(case, openai_urls, reference_url):
    route, body = CASES[case]
    tide = _post(openai_urls[DataPath.DISAGGREGATED], route, body)
    reference = _post(reference_url, route, body)

    assert 400 <= tide.status_code < 500, (tide.status_code, tide.text)
    error = tide.json()["error"]
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    assert error["code"] == tide.status_code and error["type"]
    assert "Traceback" not in tide.text
    assert (tide.status_code, tide.json()) == (reference.status_code, reference.json())


def test_good_request_after_bad_ones(openai_urls):
    answer = _post(openai_urls[DataPath.DISAGGREGATED], COMPLETIONS,
                   {"model": MODEL, "prompt": "still serving", "max_tokens": 5, "temperature": 0})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("method,route", [
    ("POST", "/scale_elastic_ep"), ("POST", "/inference/v1/abort_requests"), ("POST", "/pause"),
    ("POST", "/sleep"), ("POST", "/reset_prefix_cache"), ("POST", "/collective_rpc"),
    ("POST", "/start_profile"), ("POST", "/v1/load_lora_adapter"),
])
def test_control_routes_are_not_on_the_public_port(method, route, openai_urls):
    assert httpx.request(method, openai_urls[DataPath.DISAGGREGATED] + route, json={}, timeout=30).status_code == 404

"""Property-based fuzzing of the HTTP API: requests built from valid and invalid values of
every common field. Whatever comes in, the answer is a 2xx or an OpenAI-style 4xx error,
never a 5xx and never a hang."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.routing import DataPath

pytestmark = pytest.mark.engine

MODEL = "tide-tiny"
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=12), st.lists(st.integers(-5, 5), max_size=3), st.just({}))
# Small budgets keep each valid request to a few decode steps; huge ones must be refused.
MAX_TOKENS = st.one_of(st.integers(-3, 12), st.sampled_from([0, 2049, 10**9]), JUNK)

COMMON = {
    "model": st.one_of(st.just(MODEL), st.just("other-model"), JUNK),
    "temperature": st.one_of(st.floats(-1, 3), JUNK),
    "top_p": st.one_of(st.floats(-0.5, 1.5), JUNK),
    "top_k": st.one_of(st.integers(-2, 50), JUNK),
    "seed": st.one_of(st.integers(-2, 2**63), JUNK),
    "n": st.one_of(st.integers(-1, 3), JUNK),
    "stop": st.one_of(st.lists(st.text(max_size=3), max_size=4), st.text(max_size=3), JUNK),
    "presence_penalty": st.one_of(st.floats(-3, 3), JUNK),
    "frequency_penalty": st.one_of(st.floats(-3, 3), JUNK),
    "stream": st.one_of(st.booleans(), JUNK),
    "ignore_eos": st.booleans(),
}
COMPLETION = st.fixed_dictionaries(
    {"prompt": st.one_of(st.text(max_size=40), st.lists(st.integers(-5, 70000), max_size=8), JUNK),
     "max_tokens": MAX_TOKENS},
    optional={**COMMON, "logprobs": st.one_of(st.integers(-2, 30), JUNK), "echo": st.booleans()},
)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "nobody"]),
                                 "content": st.one_of(st.text(max_size=30), JUNK)})
CHAT = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(MESSAGE, max_size=3), JUNK), "max_completion_tokens": MAX_TOKENS},
    optional={**COMMON, "logprobs": st.booleans(), "top_logprobs": st.one_of(st.integers(-2, 30), JUNK)},
)


def _check(base_url: str, route: str, body: dict) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        response = http.post(route, json=body)
        body_text = response.read().decode(errors="replace")
    assert response.status_code < 500, f"{response.status_code} for {body}: {body_text[:500]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and error["code"] == response.status_code


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=COMPLETION)
def test_fuzzed_completions_never_5xx(body, openai_urls):
    _check(openai_urls[DataPath.DISAGGREGATED], "/v1/completions", body)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=CHAT)
def test_fuzzed_chats_never_5xx(body, openai_urls):
    _check(openai_urls[DataPath.COLOCATED], "/v1/chat/completions", body)

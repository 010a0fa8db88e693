"""One streamed `/v1/completions` request, timed as its client sees it, and the kind of
each failure: `http_<status>`, `connection`, `timeout`, `stream_cut`, `stream_error`,
`other`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from sim.workload import SimRequest

# Messages longer than this are cut in the report.
MAX_MESSAGE_CHARS = 500


@dataclass(frozen=True)
class Target:
    base_url: str  # ends in /v1
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    # vLLM's extensions: `ignore_eos` (the output length is exact) and `return_token_ids`
    # (tokens per chunk are counted, not guessed from text). Off for other servers.
    vllm_extensions: bool = True

    @property
    def completions_url(self) -> str:
        return self.base_url.rstrip("/") + "/completions"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(self, prompt: list[int], max_tokens: int) -> dict:
        body = {
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": self.temperature,
            "stream": True, "stream_options": {"include_usage": True},
        }
        if self.vllm_extensions:
            body |= {"ignore_eos": True, "return_token_ids": True}
        return body


@dataclass(eq=False)
class RequestResult:
    """What happened to one request; times in seconds since the run started."""

    request: SimRequest  # as planned: arrival_s is the scheduled send time
    sent_s: float = -1.0
    # One entry per streamed chunk that carried tokens: when it arrived, how many.
    chunk_s: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    finish_s: float = -1.0  # the end of a complete stream
    ended_s: float = -1.0  # when the request ended, complete or not
    finish_reason: str | None = None
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    error_kind: str | None = None
    error_message: str | None = None

    @property
    def sent(self) -> bool:
        return self.sent_s >= 0

    @property
    def ok(self) -> bool:
        return self.finish_s >= 0 and self.error_kind is None

    @property
    def failed(self) -> bool:
        return self.error_kind is not None

    @property
    def tokens_received(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def output_tokens(self) -> int:
        """Tokens generated: the server's usage count, else the tokens streamed."""
        return self.usage_completion_tokens if self.usage_completion_tokens is not None else self.tokens_received

    def fail(self, kind: str, message: str) -> None:
        if self.error_kind is None:
            self.error_kind, self.error_message = kind, message[:MAX_MESSAGE_CHARS]


class HTTPStatusFailure(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class StreamErrorEvent(Exception):
    """The server sent an error object inside a 200 stream."""


class StreamCut(Exception):
    """The stream ended before the request finished."""


def classify(exc: BaseException, streaming: bool) -> str:
    """The error kind of `exc`; `streaming`: the response's status line had arrived."""
    if isinstance(exc, HTTPStatusFailure):
        return f"http_{exc.status}"
    if isinstance(exc, StreamErrorEvent):
        return "stream_error"
    if isinstance(exc, StreamCut):
        return "stream_cut"
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return "connection"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)) and streaming:
        return "stream_cut"
    if isinstance(exc, httpx.TransportError):
        return "connection"
    return "other"


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def error_message(body: bytes) -> str:
    """The `error.message` of an OpenAI (or vLLM) error body, else the body's text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text or "(empty body)"
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error) if error else text


async def stream_completion(http: httpx.AsyncClient, target: Target, result: RequestResult, prompt: list[int],
                            started: float) -> RequestResult:
    """Sends the request and reads its stream into `result` (timed against `started`, a
    `time.perf_counter()` value). Never raises but for cancellation."""
    streaming = False
    result.sent_s = time.perf_counter() - started
    try:
        async with http.stream("POST", target.completions_url, json=target.body(prompt, result.request.output_tokens),
                               headers=target.headers()) as response:
            if response.status_code != 200:
                raise HTTPStatusFailure(response.status_code, error_message(await response.aread()))
            streaming = True
            done = await _read_stream(response, result, target.vllm_extensions, started)
        result.finish_s = time.perf_counter() - started
        if result.finish_reason is None or not done:
            raise StreamCut(f"stream ended {'without a finish reason' if done else 'before [DONE]'} after "
                            f"{result.tokens_received} tokens")
    except Exception as exc:  # noqa: BLE001 - every failure is recorded by kind
        result.fail(classify(exc, streaming), error_message_of(exc))
    finally:  # cancellation included
        result.ended_s = time.perf_counter() - started
    return result


def error_message_of(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, (HTTPStatusFailure, StreamErrorEvent, StreamCut)) else describe(exc)


async def _read_stream(response: httpx.Response, result: RequestResult, token_ids: bool, started: float) -> bool:
    """Reads server-sent events into `result`; True when the stream ended with [DONE]."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return True
        now = time.perf_counter() - started
        chunk = json.loads(data)
        if "error" in chunk:
            error = chunk["error"]
            raise StreamErrorEvent(str(error.get("message", error)) if isinstance(error, dict) else str(error))
        if usage := chunk.get("usage"):
            result.usage_prompt_tokens = usage.get("prompt_tokens")
            result.usage_completion_tokens = usage.get("completion_tokens")
        for choice in chunk.get("choices") or ():
            ids = choice.get("token_ids")
            # Without token ids a chunk with text is one token (text held back by the
            # detokenizer makes this an estimate; usage has the exact total).
            n = len(ids) if token_ids and ids is not None else int(bool(choice.get("text")))
            if n:
                result.chunk_s.append(now)
                result.chunk_tokens.append(n)
            if choice.get("finish_reason"):
                result.finish_reason = choice["finish_reason"]
    return False

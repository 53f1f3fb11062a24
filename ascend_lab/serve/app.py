"""The OpenAI-compatible HTTP API (FastAPI) over a :class:`~ascend_lab.serve.scheduler.Scheduler`.

``POST /v1/completions`` and ``POST /v1/chat/completions`` (streamed as server-sent events in OpenAI's chunk format,
``usage`` in a last chunk with ``stream_options.include_usage``, or one JSON body), ``GET /v1/models``,
``GET /health`` and ``GET /metrics`` (Prometheus text). Bad requests get a 4xx with OpenAI's error body
``{"error": {"message", "type", "param", "code"}}`` and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ascend_lab.serve.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from ascend_lab.serve.scheduler import ABORT, Draining, QueueFull, Request as EngineRequest, Sampling, Scheduler
from ascend_lab.serve.schemas import ChatCompletionRequest, CompletionRequest
from ascend_lab.serve.text import TextStream, chat_prompt, stop_token_ids

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models")
# How often a non-streamed request that waits for tokens checks whether its client is still there.
DISCONNECT_POLL_S = 0.5


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


@dataclass
class ServedModel:
    """What the API needs to know about the model behind the scheduler."""

    name: str
    tokenizer: Any
    vocab_size: int
    max_positions: int | None  # rope table length (None: no limit known besides the cache)


class _CountRequests:
    """Counts every /v1 response by status code (a plain ASGI wrapper: streaming and disconnects pass untouched)."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        status = {"code": 499}

        async def send_counted(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:  # unknown paths share one label (a label per path a client invents would grow without end)
            path = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.request_done(path, status["code"])


def build_app(scheduler: Scheduler, model: ServedModel, metrics: ServerMetrics, api_key: str | None,
              default_max_tokens: int, retry_after_s: int) -> FastAPI:
    app = FastAPI(title="ascend_lab", docs_url=None, redoc_url=None, openapi_url=None)
    tokenizer = model.tokenizer
    stop_ids = stop_token_ids(tokenizer)
    created = int(time.time())
    app.state.draining = False

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return ApiError(400, "the request body is not valid JSON").response()
        message = f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid')}"
        return ApiError(400, message, param=".".join(where) or None).response()

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "a valid API key is needed: send the header 'Authorization: Bearer <key>'",
                           "authentication_error", code="invalid_api_key")

    @app.get("/health")
    async def health() -> Response:
        if scheduler.error is not None:
            return JSONResponse({"status": "error", "error": str(scheduler.error)}, status_code=503)
        if app.state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.prometheus_text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        check_auth(request)
        return JSONResponse({"object": "list", "data": [
            {"id": model.name, "object": "model", "created": created, "owned_by": "ascend_lab",
             "max_model_len": context_limit()}]})

    def context_limit() -> int:
        return min(scheduler.capacity, model.max_positions or scheduler.capacity)

    def check_model(body) -> None:
        if body.model != model.name:
            raise ApiError(404, f"the model {body.model!r} does not exist; this server serves {model.name!r}",
                           param="model", code="model_not_found")

    def sampling_for(body, prompt_len: int, max_tokens: int | None) -> Sampling:
        if prompt_len == 0:
            raise ApiError(400, "the prompt is empty", param="prompt" if isinstance(body, CompletionRequest)
                           else "messages")
        max_tokens = default_max_tokens if max_tokens is None else max_tokens
        if max_tokens <= 0:
            raise ApiError(400, f"max_tokens must be at least 1 (got {max_tokens})", param="max_tokens")
        limit = context_limit()
        if prompt_len > limit or scheduler.slots_needed(prompt_len, 1) > scheduler.capacity:
            raise ApiError(400, f"the prompt is {prompt_len} tokens, longer than this model's context of {limit} "
                                "tokens", param="prompt", code="context_length_exceeded")
        if (scheduler.slots_needed(prompt_len, max_tokens) > scheduler.capacity
                or prompt_len + max_tokens > limit):
            room = min(scheduler.capacity - scheduler.slots_needed(prompt_len, 1) + 1, limit - prompt_len)
            raise ApiError(400, f"max_tokens={max_tokens} with a {prompt_len}-token prompt exceeds the context of "
                                f"{limit} tokens (the cache holds {scheduler.capacity} slots); ask for at most {room}",
                           param="max_tokens", code="context_length_exceeded")
        temperature = body.temperature or 0.0
        return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=body.top_p or 1.0, seed=body.seed,
                        ignore_eos=body.ignore_eos, min_tokens=body.min_tokens)

    def prompt_ids(prompt) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            if any(not 0 <= t < model.vocab_size for t in prompt):
                raise ApiError(400, f"prompt token ids must be in [0, {model.vocab_size})", param="prompt")
            return list(prompt)
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "one prompt per request (a list of one string)", param="prompt")
            prompt = prompt[0]
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        check_auth(request)
        check_model(body)
        ids = prompt_ids(body.prompt)
        return await generate(request, body, ids, sampling_for(body, len(ids), body.max_tokens), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        check_auth(request)
        check_model(body)
        text = chat_prompt(tokenizer, [{"role": m.role, "content": m.text()} for m in body.messages])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not any(m.text() for m in body.messages):
            ids = []
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await generate(request, body, ids, sampling_for(body, len(ids), max_tokens), chat=True)

    async def generate(request: Request, body, ids: list[int], sampling: Sampling, chat: bool) -> Response:
        if app.state.draining:
            raise ApiError(503, "the server is shutting down", "server_error")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(token, finish) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (token, finish))
            except RuntimeError:  # the event loop has closed (shutdown): nobody is listening
                pass

        engine_request = EngineRequest(ids, sampling, stop_ids, emit)
        try:
            scheduler.submit(engine_request)
        except QueueFull:
            raise ApiError(429, f"the server is busy: {scheduler.queue_size} requests are waiting already; retry "
                                f"after {retry_after_s} s", "rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(retry_after_s)}) from None
        except Draining:
            raise ApiError(503, "the server is shutting down", "server_error") from None
        metrics.admitted(len(ids))
        call = _Call(chat, model.name, engine_request, queue, TextStream(tokenizer, body.stops()))
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(call.events(usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return JSONResponse(await call.whole(request))

    return app


class _Call:
    """One request's tokens from the scheduler turned into OpenAI responses."""

    def __init__(self, chat: bool, model: str, request: EngineRequest, queue: asyncio.Queue, text: TextStream):
        self.chat, self.model, self.request, self.queue, self.text = chat, model, request, queue, text
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.completion_tokens = 0

    async def pieces(self, next_item) -> AsyncIterator[tuple[str, str | None]]:
        """(text delta, finish reason or None) until the request ends; a stop string ends it early."""
        while True:
            token, finish = await next_item()
            delta = ""
            if token is not None:
                self.completion_tokens += 1
                delta = self.text.push(token)
                if self.text.stopped:
                    self.request.cancel()  # its row frees at the next step
                    yield delta, "stop"
                    return
            if finish is not None:
                yield delta + self.text.finish(), finish
                return
            if delta:
                yield delta, None

    def usage(self) -> dict[str, int]:
        prompt = len(self.request.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens}

    def _choice(self, text: str, finish: str | None, stream: bool) -> dict:
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        key = "delta" if stream else "message"
        return {"index": 0, key: ({"content": text} if stream else {"role": "assistant", "content": text}),
                "logprobs": None, "finish_reason": finish}

    def _envelope(self, stream: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if stream and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        ended = False
        try:
            if self.chat:
                yield _sse({**self._envelope(True), "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}]})
            async for delta, finish in self.pieces(self.queue.get):
                ended = finish is not None
                yield _sse({**self._envelope(True), "choices": [self._choice(delta, finish, True)]})
            if include_usage:
                yield _sse({**self._envelope(True), "choices": [], "usage": self.usage()})
            yield "data: [DONE]\n\n"
        finally:
            if not ended:  # the client went away (or the server stops): free the row
                self.request.cancel()

    async def whole(self, http_request: Request) -> dict:
        async def next_item():
            while True:
                try:
                    return await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await http_request.is_disconnected():
                        self.request.cancel()
                        return None, ABORT

        parts, finish = [], None
        try:
            async for delta, finish in self.pieces(next_item):
                parts.append(delta)
        finally:
            if finish is None:
                self.request.cancel()
        return {**self._envelope(False), "choices": [self._choice("".join(parts), finish, False)],
                "usage": self.usage()}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def count_requests(app: FastAPI, metrics: ServerMetrics):
    """The ASGI app to serve: ``app`` with every /v1 response counted by status code."""
    return _CountRequests(app, metrics)

"""The FastAPI app: OpenAI-compatible routes over a ``ServedModel`` and its ``Batcher``.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``
(the model's chat template), ``GET /v1/task`` and ``POST /v1/parse`` (a sentence in, the run's
output format out: what the page at ``/`` calls). Every error is a JSON body in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for anything the client can
fix (bad JSON, types or text, unknown fields, numbers out of range, unknown model, prompt +
``max_tokens`` over the context, invalid schema, a Host not allowed, a wrong key, oversized body:
400/401/404/413), 429 with ``Retry-After`` when the queue is full, 504 when a request outlives
``--timeout`` (compiling its constraint included). Responses carry ``constraint`` (what
restricted the output) and ``timing`` besides OpenAI's fields.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import secrets
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from eval.serve.batcher import Batcher, Completion, Job, QueueFull
from eval.serve.guard import Guard, ServeSettings, error_response
from eval.serve.protocol import DEFAULT_MAX_TOKENS, ChatRequest, CompletionRequest, ParseRequest, _Generation
from eval.serve.served_model import ConstraintSpec, ServedModel
from parsetune.errors import UserError

__all__ = ["ServeSettings", "create_app"]


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None, headers: dict | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code, self.headers = status, message, kind, param, code, headers


_error = error_response


def _page() -> str:
    return importlib.resources.files("eval.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(served: ServedModel, batcher: Batcher, settings: ServeSettings = ServeSettings()) -> FastAPI:
    app = FastAPI(title="parsetune serve", version="1", docs_url=None, redoc_url=None)  # /docs would load Swagger from a CDN
    app.state.served, app.state.batcher = served, batcher

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError):
        return _error(err.status, err.message, err.kind, err.param, err.code, err.headers)

    @app.exception_handler(UserError)
    async def _user_error(_: Request, err: UserError):
        return _error(400, str(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError):
        errors = err.errors()
        unknown = [e for e in errors if e.get("type") == "extra_forbidden"]  # a misspelt field first: it is also "missing"
        first = (unknown or errors or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            message = "the body is not valid JSON (UTF-8)"
        elif first.get("type") == "extra_forbidden":  # OpenAI's words: a misspelt field must not pass unnoticed
            return _error(400, f"unrecognized request argument supplied: {where}", param=where, code="unknown_field")
        return _error(400, f"{where}: {message}" if where else message, param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException):
        message = str(err.detail)
        if err.status_code == 400 and "parsing the body" in message:  # FastAPI's words for bytes that are not UTF-8
            message = "the body is not valid JSON (UTF-8)"
        return _error(err.status_code, message, "not_found_error" if err.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal(_: Request, err: Exception):  # a bug of ours, still in OpenAI's shape
        return _error(500, f"internal error: {type(err).__name__}: {err}", "server_error")

    app.add_middleware(Guard, settings=settings)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return _page()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.name, "waiting": batcher.waiting, "running": batcher.running, "served": batcher.served_requests, "cancelled": batcher.cancelled}  # fmt: skip

    def model_card() -> dict[str, Any]:
        return {"id": served.name, "object": "model", "created": 0, "owned_by": "parsetune"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        _check_model(model_id)
        return model_card()

    @app.get("/v1/task")
    async def task():
        return served.info()

    def _check_model(name: str) -> None:
        if name != served.name:
            raise ApiError(404, f"model {name!r} does not exist; this server serves {served.name!r}", param="model", code="model_not_found")

    def _constraint_spec(body: _Generation) -> ConstraintSpec:
        fmt = body.response_format
        if fmt is not None and fmt.type == "json_object":
            return ConstraintSpec("json_object")
        if fmt is not None and fmt.type == "json_schema":
            schema, name = fmt.schema_and_name()
            return ConstraintSpec("json_schema", schema, name)
        return ConstraintSpec(body.grammar or "task")

    async def _generate(request: Request, body: _Generation, prompt: str | list[int], spec: ConstraintSpec) -> tuple[Completion, int, str]:
        _check_model(body.model)
        deadline = time.perf_counter() + settings.timeout_s  # compiling the constraint counts too

        async def within_deadline(work):
            try:
                return await asyncio.wait_for(run_in_threadpool(work), max(deadline - time.perf_counter(), 0.0))
            except asyncio.TimeoutError:  # the thread finishes on its own; the client is answered now
                raise ApiError(504, f"the request took longer than {settings.timeout_s:g} s (compiling its constraint or reading its prompt)", "timeout_error") from None  # fmt: skip

        constraint = await within_deadline(lambda: served.constraint(spec))
        if isinstance(prompt, str):
            ids = await within_deadline(lambda: served.tokenizer(prompt)["input_ids"])
            text = prompt
        else:
            vocab = served.model.vocab_size
            if any(not 0 <= int(t) < vocab for t in prompt):
                raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
            ids, text = [int(t) for t in prompt], served.tokenizer.decode(prompt)
        if not ids:
            raise ApiError(400, "the prompt encodes to no tokens", param="prompt")
        ids = served.prefix + ids  # a prompt-tuned model reads its soft prompt first
        room = served.context_length - len(ids)
        if room < 1:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; this model's context is {served.context_length}", param="prompt", code="context_length_exceeded")  # fmt: skip
        max_tokens = body.max_tokens if body.max_tokens is not None else min(DEFAULT_MAX_TOKENS, room)
        if max_tokens > room:
            raise ApiError(400, f"max_tokens {max_tokens} + the prompt's {len(ids)} tokens exceed this model's context of {served.context_length}", param="max_tokens", code="context_length_exceeded")  # fmt: skip
        job = Job(
            ids, max_tokens, body.temperature, body.top_p, body.seed if body.seed is not None else secrets.randbits(31),
            constraint, text, tuple(body.stop or ()),
        )  # fmt: skip
        try:
            future = batcher.submit(job)
        except QueueFull as err:
            raise ApiError(429, f"the server is busy ({err}); retry later", "rate_limit_error", headers={"Retry-After": str(settings.retry_after_s)}) from None  # fmt: skip
        waiting = asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=0.2)
            if done:
                break
            if await request.is_disconnected():
                job.cancelled.set()
                raise ApiError(499, "the client closed the request")
            if time.perf_counter() > deadline:
                job.cancelled.set()
                raise ApiError(504, f"the request took longer than {settings.timeout_s:g} s", "timeout_error")
        try:
            completion = waiting.result()
        except asyncio.CancelledError:
            raise ApiError(499, "the request was cancelled") from None
        return completion, len(ids), constraint.description if constraint is not None else "none"

    def _usage(prompt_tokens: int, completion: Completion) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion.completion_tokens, "total_tokens": prompt_tokens + completion.completion_tokens}  # fmt: skip

    def _timing(completion: Completion) -> dict[str, Any]:
        return {"queued_seconds": round(completion.queued_seconds, 4), "decode_seconds": round(completion.decode_seconds, 4), "batch_rows": completion.batch_rows}  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest):
        completion, prompt_tokens, described = await _generate(request, body, body.prompt, _constraint_spec(body))
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": served.name,
            "choices": [{"index": 0, "text": completion.text, "finish_reason": completion.finish_reason, "logprobs": None}],
            "usage": _usage(prompt_tokens, completion),
            "constraint": described,
            "timing": _timing(completion),
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: ChatRequest):
        if not getattr(served.tokenizer, "chat_template", None):
            raise ApiError(400, f"model {served.name!r} has no chat template; use /v1/completions")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        try:
            prompt = served.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # noqa: BLE001 - a template that rejects these messages (e.g. role order)
            raise ApiError(400, f"messages: the chat template rejects them ({err})", param="messages") from None
        completion, prompt_tokens, described = await _generate(request, body, prompt, _constraint_spec(body))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text}, "finish_reason": completion.finish_reason, "logprobs": None}],  # fmt: skip
            "usage": _usage(prompt_tokens, completion),
            "constraint": described,
            "timing": _timing(completion),
        }

    @app.post("/v1/parse")
    async def parse(request: Request, body: ParseRequest):
        fmt = served.prompt_format
        if fmt is None:
            raise ApiError(400, f"{served.name!r} is not a run dir with prepared data: its prompt format is unknown; use /v1/completions")  # fmt: skip
        started = time.perf_counter()
        budget = body.max_tokens if body.max_tokens is not None else served.task.max_new_tokens
        request_body = CompletionRequest(model=served.name, prompt=fmt.render(body.text), max_tokens=budget)
        completion, prompt_tokens, described = await _generate(request, request_body, request_body.prompt, ConstraintSpec("task"))
        return {
            "text": body.text,
            "output": completion.text.strip(),
            "finish_reason": completion.finish_reason,
            "constraint": described,
            "seconds": round(time.perf_counter() - started, 4),
            "usage": _usage(prompt_tokens, completion),
            "timing": _timing(completion),
        }

    return app

"""Request bodies of the API (OpenAI's completions and chat completions, plus ``/v1/parse``), checked.

The pydantic models accept OpenAI's fields and reject, with a 400 naming the field, what we cannot
honour: ``stream``, ``n`` > 1, ``logprobs``, ``echo``, a list of several prompts, and OpenAI fields
that would change the output at a value other than their neutral one (``frequency_penalty``,
``logit_bias``, ``tools``, ...). A field neither OpenAI's nor ours is refused too (OpenAI's
"Unrecognized request argument"): a misspelt ``gramar`` must not silently give unconstrained
output. Fields that cannot change the output (``user``, ``metadata``, ``store``, ``service_tier``,
``parallel_tool_calls``) are accepted and ignored. Every number is bounded (``seed`` to the
sampler's int64, ``max_tokens`` to int32 before the context check): a value out of range is one
client's 400, never a 500 for every request batched with it. Every string anywhere in the body must
be Unicode text (a lone surrogate such as ``"\\ud800"`` is valid JSON but no text), numbers finite,
nesting at most ``MAX_DEPTH`` deep.

Differences from OpenAI, on purpose: ``temperature`` defaults to 0 (greedy: a parser should answer
the same way twice) and ``max_tokens`` to ``DEFAULT_MAX_TOKENS`` (within the context). Extra body
fields of ours: ``grammar`` (``task`` | ``viggo`` | ``none``): which constraint applies when
``response_format`` asks for none.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MAX_TOKENS = 256
GRAMMARS = ("task", "viggo", "none")
MAX_DEPTH = 64  # JSON nesting in a body (a schema deeper than this is no schema a parser needs)
INT32_MAX, INT64_MIN, INT64_MAX = 2**31 - 1, -(2**63), 2**63 - 1
SCHEMA_SPEC_KEYS = frozenset({"name", "description", "schema", "strict"})  # OpenAI's response_format.json_schema


def _path(parts: tuple) -> str:
    return ".".join(str(p) for p in parts) or "the body"


def check_json_text(value: Any) -> None:
    """A ValueError naming the place of the first string that is not Unicode text (a lone
    surrogate), non-finite number or nesting deeper than ``MAX_DEPTH`` in a parsed JSON body."""
    stack: list[tuple[Any, tuple]] = [(value, ())]
    while stack:
        item, where = stack.pop()
        if len(where) > MAX_DEPTH:
            raise ValueError(f"{_path(where[:3])}...: nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"{_path(where)}: not valid Unicode text (a lone surrogate {item[err.start]!r}: send UTF-8 text)") from None  # fmt: skip
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{_path(where)}: {item} is not a JSON number")
        elif isinstance(item, dict):
            for key, sub in item.items():
                stack.append((key, where))
                stack.append((sub, (*where, key if isinstance(key, str) and _is_text(key) else repr(key))))
        elif isinstance(item, list):
            stack.extend((sub, (*where, i)) for i, sub in enumerate(item))


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class _Part(BaseModel):
    """A nested object of a request: OpenAI's fields only."""

    model_config = ConfigDict(extra="forbid")


class _Body(BaseModel):
    """A request body: OpenAI's fields and ours only; all of it text, finite and not too deep."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        check_json_text(data)
        return data


def _neutral(name: str, value: Any, neutral: tuple) -> Any:
    """OpenAI fields we do not implement: accepted at the value that changes nothing, else refused."""
    if value not in neutral:
        raise ValueError(f"not supported (only {neutral[0]!r}; {name} is an OpenAI field this server does not implement)")
    return value


class ResponseFormat(_Part):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @field_validator("json_schema")
    @classmethod
    def _known_keys(cls, spec: dict[str, Any] | None) -> dict[str, Any] | None:
        unknown = sorted(set(spec or {}) - SCHEMA_SPEC_KEYS)
        if unknown:
            raise ValueError(f"unrecognized field {unknown[0]!r} (expected name, description, schema, strict)")
        return spec

    def schema_and_name(self) -> tuple[dict, str]:
        from parsetune.errors import UserError

        spec = self.json_schema or {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise UserError("response_format.json_schema.schema: a JSON Schema object is required")
        return schema, str(spec.get("name") or "")


class _Generation(_Body):
    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int = 1
    stop: Union[str, list[str], None] = None
    stream: bool = False
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    logprobs: Any = None
    response_format: ResponseFormat | None = None
    grammar: Literal["task", "viggo", "none"] | None = None
    # OpenAI's, without effect on the output: accepted and ignored
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    stream_options: dict[str, Any] | None = None
    # OpenAI's, not implemented: only their neutral values
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, allow_inf_nan=False)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = None

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None, info) -> float | None:
        return _neutral(info.field_name, value, (0, None))

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict | None) -> dict | None:
        return _neutral("logit_bias", value or None, (None,))

    @field_validator("n")
    @classmethod
    def _one(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, stream: bool) -> bool:
        if stream:
            raise ValueError("streaming is not supported: send stream=false")
        return stream

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, logprobs: Any) -> Any:
        if logprobs not in (None, False, 0):
            raise ValueError("logprobs are not supported")
        return logprobs

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: Union[str, list[str], None]) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 non-empty stop strings")
        return stops


class CompletionRequest(_Generation):
    prompt: Union[str, list[str], list[int]]
    echo: bool = False
    best_of: int | None = None  # OpenAI's, not implemented: 1 only
    suffix: str | None = None  # OpenAI's, not implemented: none only

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, best_of: int | None) -> int | None:
        return _neutral("best_of", best_of, (1, None))

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, suffix: str | None) -> str | None:
        return _neutral("suffix", suffix or None, (None,))

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ValueError("one prompt per request (got a list of several)")
            prompt = prompt[0]
        if isinstance(prompt, (str, list)) and len(prompt) == 0:
            raise ValueError("the prompt is empty")
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported")
        return echo


class TextPart(_Part):
    type: Literal["text"]
    text: str


class Message(_Part):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[TextPart]]
    name: str | None = None  # OpenAI's participant name: accepted, not shown to the model

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)  # OpenAI's newer name of max_tokens
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    parallel_tool_calls: bool | None = None  # without tools: no effect
    tools: list[Any] | None = None
    tool_choice: Any = None

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, value: int | None) -> int | None:
        return _neutral("top_logprobs", value, (0, None))

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list | None) -> list | None:
        return _neutral("tools", tools or None, (None,))

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, choice: Any) -> Any:
        return _neutral("tool_choice", choice, ("none", None, "auto"))

    @model_validator(mode="after")
    def _one_budget(self) -> "ChatRequest":
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens differ: send one of them")
            self.max_tokens = self.max_completion_tokens
        return self


class ParseRequest(_Body):
    text: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)

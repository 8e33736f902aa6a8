"""Request bodies of the API (OpenAI's completions and chat completions, plus ``/v1/parse``), checked.

The pydantic models accept what OpenAI's clients send (unknown fields are ignored) and reject
values we cannot honour with a clear 400 (``stream``, ``n`` > 1, ``logprobs``, ``echo``, a prompt
list of several prompts). Differences from OpenAI, on purpose: ``temperature`` defaults to 0
(greedy: a parser should answer the same way twice) and ``max_tokens`` to ``DEFAULT_MAX_TOKENS``
(within the context). Extra body fields of ours: ``grammar`` (``task`` | ``viggo`` | ``none``):
which constraint applies when ``response_format`` asks for none.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_MAX_TOKENS = 256
GRAMMARS = ("task", "viggo", "none")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    def schema_and_name(self) -> tuple[dict, str]:
        from parsetune.errors import UserError

        spec = self.json_schema or {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise UserError("response_format.json_schema.schema: a JSON Schema object is required")
        return schema, str(spec.get("name") or "")


class _Generation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = 1
    stop: Union[str, list[str], None] = None
    stream: bool = False
    seed: int | None = None
    logprobs: Any = None
    response_format: ResponseFormat | None = None
    grammar: Literal["task", "viggo", "none"] | None = None

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


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)


class ParseRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)

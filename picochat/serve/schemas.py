"""Request bodies of the OpenAI-compatible API (pydantic models; FastAPI validates them).

Ranges that hold for every server are declared here and come back as 400 with the parameter
named; limits that an operator sets (`ServeLimits`) are checked by the routes. Numbers and
booleans are strict: "8" is not 8 and true is not 1, since a client that sends them has a bug that
a silent conversion would hide. Unknown fields are ignored, as OpenAI's own clients send fields a
small server has no use for; fields that would change the answer and that picochat does not
implement (logprobs, logit_bias, tools, penalties, ...) are rejected rather than silently ignored,
each by a field validator so that the error names it.
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from picochat.core.chat import ChatFormatError, validate_messages
from picochat.serve.errors import APIError

INT64 = 2**63
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[TextPart] | None = None

    @model_validator(mode="after")
    def _content_present(self):
        # OpenAI allows null content only for an assistant message (one that made tool calls).
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content (a string), got null")
        return self

    def text(self) -> str:
        """Content as one string: OpenAI also allows a list of parts, of which we take the text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        if any(p.type != "text" for p in self.content):
            kinds = sorted({p.type for p in self.content if p.type != "text"})
            raise APIError(400, f"message content of type {', '.join(kinds)} is not supported; send text",
                           param="messages")
        return "".join(p.text or "" for p in self.content)


def chat_messages(messages: list[ChatMessage]) -> list[dict]:
    """A request's messages as picochat's conversation ({"role", "content"} dicts), checked
    by the chat template's rules (400 naming `messages` if they break one)."""
    converted = [{"role": ROLE_ALIASES.get(m.role, m.role), "content": m.text()} for m in messages]
    try:
        return validate_messages(converted, where="messages")
    except ChatFormatError as e:
        raise APIError(400, str(e), param="messages") from None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class SamplingFields(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True)  # strict: 1 yes, "1" no
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, strict=True)
    top_k: StrictInt | None = Field(default=None, ge=1)  # not OpenAI's; clients pass it in extra_body
    n: StrictInt = Field(default=1, ge=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: StrictInt | None = Field(default=None, ge=-INT64, lt=INT64)
    user: str | None = None
    # Not implemented; accepted only when they ask for nothing (null, 0, false, {}).
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, strict=True)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, strict=True)
    logprobs: StrictBool | StrictInt | None = None  # chat: a bool; completions: how many (0..5)
    top_logprobs: StrictInt | None = None
    logit_bias: dict | None = None

    @field_validator("presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias")
    @classmethod
    def _not_implemented(cls, value, info: ValidationInfo):
        if value:
            raise ValueError(f"{info.field_name} is not supported by this server; omit it (or send null)")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)  # the newer name of max_tokens
    tools: list | None = None
    response_format: dict | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value):
        if value:
            raise ValueError("tools (function calling) are not supported by this server")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value):
        if value and value.get("type") not in (None, "text"):
            raise ValueError("response_format other than {\"type\": \"text\"} is not supported")
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    max_tokens: StrictInt | None = Field(default=16, ge=1)  # OpenAI's default for this endpoint
    echo: StrictBool = False
    suffix: str | None = None
    best_of: StrictInt | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value):
        if value == []:
            raise ValueError("prompt is an empty list; send a string or a list of strings")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value):
        if value:
            raise ValueError("suffix (insertion) is not supported by this server")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value, info: ValidationInfo):
        if value is not None and value != info.data.get("n", 1):
            raise ValueError("best_of is not supported by this server (it must equal n or be omitted)")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ScoreRequest(BaseModel):
    """picochat's own endpoint: reward-model scores of responses to one conversation."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] | None = None  # the conversation, ending with a user message
    prompt: str | None = None  # or just the user message
    responses: list[str] = Field(min_length=1)
    finished: list[StrictBool] | None = None  # False for a response that was cut off (no end token)

    @model_validator(mode="after")
    def _one_prompt(self):
        # APIError, not ValueError: pydantic reports a model-level ValueError without a field name.
        if (self.messages is None) == (self.prompt is None):
            raise APIError(400, "give either messages (a conversation ending with a user message) or prompt",
                           param="messages")
        if self.finished is not None and len(self.finished) != len(self.responses):
            raise APIError(400, "finished must have one entry per response", param="finished")
        return self


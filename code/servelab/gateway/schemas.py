"""與 OpenAI chat／completions 相同形狀的 pydantic v2 模型：請求的驗證邊界，與回應在 OpenAPI 文件裡的樣子。

請求模型是 ``strict``（``"0.7"`` 不會被偷偷轉成 0.7）並允許額外欄位（``extra="allow"``）：vLLM 的擴充參數
（``top_k``、``ignore_eos``、``min_tokens``……）原樣轉給 vLLM，由它驗證。
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# --8<-- [start:request_models]
REQUEST = ConfigDict(strict=True, extra="allow")  # (1)!
Str256 = Annotated[str, Field(min_length=1, max_length=256)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    include_usage: bool = False  # (2)!


class ChatMessage(BaseModel):
    model_config = REQUEST
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None  # 文字，或多模態的內容片段
    name: str | None = Field(None, max_length=256)


class SamplingFields(BaseModel):  # chat 與 completions 共用的取樣參數與邊界（同 OpenAI 的文件）
    model_config = REQUEST
    model: Str256
    max_tokens: int | None = Field(None, ge=1)  # (3)!
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1024)]  # (4)!
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    prompt: Annotated[str, Field(min_length=1)] | Annotated[list[str], Field(min_length=1)] | TokenIds \
        | Annotated[list[TokenIds], Field(min_length=1)]  # (5)!
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
# --8<-- [end:request_models]


def requested_tokens(body: SamplingFields) -> int | None:
    """這個請求最多要生成幾個 token（chat 的 max_completion_tokens 優先）。"""
    return getattr(body, "max_completion_tokens", None) or body.max_tokens


# --8<-- [start:response_models]
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class ChatChoiceMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    message: ChatChoiceMessage
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    text: str
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["model"] = "model"
    max_model_len: int | None = None  # vLLM 的擴充欄位


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
# --8<-- [end:response_models]


class BatchLine(BaseModel):
    """一個批次工作裡的一個請求（形狀同 OpenAI Batch API 輸入檔的一行）。"""
    model_config = ConfigDict(strict=True, extra="forbid")
    custom_id: Str256
    method: Literal["POST"] = "POST"
    url: Literal["/v1/chat/completions", "/v1/completions"]
    body: dict[str, Any]


class JobRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    requests: Annotated[list[BatchLine], Field(min_length=1, max_length=1000)]


class JobResult(BaseModel):
    custom_id: str
    status_code: int
    body: dict[str, Any]


class Job(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: Literal["queued", "running", "completed"]
    created_at: float
    completed_at: float | None = None
    total: int
    done: int = 0
    results: list[JobResult] = []


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 429, 502, 503, 504)
}

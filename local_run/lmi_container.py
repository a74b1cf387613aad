"""What the deployed container accepts, and how it refuses: DJL LMI 18 (djl-inference
0.36.0-lmi18.0.0-cu128) with vLLM 0.12.0, read in their own source (docs/decisions.md,
"The local run refuses what AWS refuses"). The local model server holds every request to
these rules, so a request the container would refuse is refused here, the same way.

- Dispatch (djl-serving lmi_vllm/vllm_async_service.py, preprocess_request): `prompt` is a
  completion, else `inputs` a TGI-style generation, else `messages` a chat; the first found
  wins, whatever else the body holds. None of them: 424 "Input parsing failed: invalid
  payload. must contain prompt, inputs, or messages".
- The body is parsed into vLLM's ChatCompletionRequest / CompletionRequest (pydantic, lax:
  "2" is 2, "abc" is no int). A failure is LMI's "Input parsing failed: <pydantic's text>";
  that text has newlines, which LMI uses as the HTTP reason phrase and Netty refuses, so
  it reaches SageMaker as a 500 (djl-serving InferenceRequestHandler.sendOutput,
  netty HttpResponseStatus).
- vLLM's own refusals (the context, tokenization) are its 400 ErrorResponse
  `{"error": {"message", "type", "param", "code"}}`, which LMI 18's formatter reads from the
  wrong place (request_response_utils.vllm_non_stream_output_formatter): HTTP 500, body
  `{"error": "error=ErrorInfo(message=..., type='BadRequestError', param=None, code=400)", "code": 500}`.
- Prompt length: this stand-in has no tokenizer; it counts a prompt's UTF-8 bytes, which
  is at least its tokens for a byte-level BPE tokenizer (Llama 3's): it refuses every
  request vLLM refuses, and some long ones vLLM would take (the stricter reading).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, ValidationError

# LMI's dispatch, in its order: the body key and the schema it selects.
DISPATCH = (("prompt", "completions"), ("inputs", "tgi"), ("messages", "chat"))
# vLLM 0.12.0's CompletionRequest.max_tokens default.
COMPLETION_MAX_TOKENS_DEFAULT = 16


class ContainerError(Exception):
    """The container's non-2xx answer: its HTTP status and its body, as LMI sends them."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def served_schema(request: dict) -> str:
    """The schema LMI serves the body as; ContainerError (424) when it has none of the keys."""
    for key, schema in DISPATCH:
        if key in request:
            return schema
    raise input_parsing_failed("invalid payload. must contain prompt, inputs, or messages")


class _Lax(BaseModel):
    model_config = ConfigDict(extra="allow")


# The fields of vLLM 0.12.0's request models (vllm/entrypoints/openai/protocol.py) that
# this stand-in reads, typed as vLLM types them; every other field is allowed, as there.
class ChatCompletionRequest(_Lax):
    messages: list[dict]
    n: int | None = 1
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stream: bool | None = False
    logprobs: bool | None = False
    stop: str | list[str] | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0


class CompletionRequest(_Lax):
    prompt: str | list[str] | list[int] | list[list[int]]
    n: int = 1
    max_tokens: int | None = COMPLETION_MAX_TOKENS_DEFAULT
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stream: bool | None = False
    logprobs: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0


def parsed(request: dict, schema: str) -> BaseModel:
    """The body as vLLM's request model reads it; ContainerError as LMI answers a body that
    does not parse."""
    model = ChatCompletionRequest if schema == "chat" else CompletionRequest
    try:
        return model(**request)
    except ValidationError as exc:
        raise input_parsing_failed(str(exc)) from None
    except TypeError as exc:  # keys that are not strings
        raise input_parsing_failed(str(exc)) from None


def input_parsing_failed(detail: str) -> ContainerError:
    """LMI's answer to a body it cannot parse: 424, unless the text has a line break, which
    Netty refuses in the reason phrase LMI makes of it: then a 500 of its own."""
    message = f"Input parsing failed: {detail}"
    if "\n" in message or "\r" in message:
        reason = f"reasonPhrase contains one of the following prohibited characters: \\r\\n: {message}"
        return ContainerError(500, json.dumps({"code": 500, "type": "IllegalArgumentException", "message": reason}))
    return ContainerError(424, json.dumps({"error": message, "code": 424}))


def vllm_bad_request(message: str) -> ContainerError:
    """vLLM's 400 as LMI 18 passes it on: a 500 with the ErrorResponse's repr as the error."""
    error = f"error=ErrorInfo(message={message!r}, type='BadRequestError', param=None, code=400)"
    return ContainerError(500, json.dumps({"error": error, "code": 500}))


def prompt_tokens(text: str) -> int:
    """An upper bound of the prompt's tokens: its UTF-8 bytes. A string a tokenizer cannot
    take (a lone surrogate) is refused as vLLM's tokenizer refuses it."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise _untokenizable() from None


_TOKENIZER_TYPE_ERROR = "TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]"


def _untokenizable() -> ContainerError:
    return ContainerError(-1, _TOKENIZER_TYPE_ERROR)  # completed by check_request with the path's wording


def check_request(schema: str, request: BaseModel, prompt_text: str, max_model_len: int) -> None:
    """vLLM 0.12.0's checks of a parsed request against the served context
    (serving_engine._validate_input for chat, the renderer's max_length for completions)
    and its sampling parameters (SamplingParams._verify_args)."""
    chat = schema == "chat"
    try:
        token_num = prompt_tokens(prompt_text)
    except ContainerError as exc:
        # chat: create_error_response(f"{e} {e.__cause__}"); completions: str(e).
        raise vllm_bad_request(f"{exc.message} None" if chat else exc.message) from None
    if chat:
        max_tokens = request.max_completion_tokens or request.max_tokens
        if token_num >= max_model_len:
            raise vllm_bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, your request has "
                f"{token_num} input tokens. Please reduce the length of the input messages. None"
            )
        if max_tokens is not None and token_num + max_tokens > max_model_len:
            raise vllm_bad_request(
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum context "
                f"length is {max_model_len} tokens and your request has {token_num} input tokens "
                f"({max_tokens} > {max_model_len} - {token_num}). None"
            )
    else:
        max_tokens = request.max_tokens
        max_length = max_model_len - (max_tokens or 0)
        if token_num > max_length:
            raise vllm_bad_request(
                f"This model's maximum context length is {max_length} tokens. However, your request has {token_num} "
                "input tokens. Please reduce the length of the input messages."
            )
    if max_tokens is not None and max_tokens < 1:
        raise vllm_bad_request(f"max_tokens must be at least 1, got {max_tokens}.")
    if request.n is not None and request.n < 1:
        raise vllm_bad_request(f"n must be at least 1, got {request.n}.")
    if request.temperature is not None and request.temperature < 0:
        raise vllm_bad_request(f"temperature must be non-negative, got {request.temperature}.")

"""Request validation and response shapes of the OpenAI-compatible API (completions, chat completions).

Every bad input is an ``ApiError``: an HTTP status and an error in OpenAI's format naming the parameter.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from serving.daemon.job import End, Kind


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_body(message: str, type: str = "server_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


COMMON = {"model", "max_tokens", "stream", "stream_options", "n", "temperature", "top_p", "stop", "seed", "user",
          "presence_penalty", "frequency_penalty", "logit_bias", "ignore_eos", "logprobs", "best_of"}
ONLY = {Kind.COMPLETION: {"prompt", "echo", "suffix"},
        Kind.CHAT: {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
                    "parallel_tool_calls"}}
ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class Parsed:
    kind: Kind
    text: str | None               # the prompt text (completions) or None
    prompt_ids: list[int] | None   # a prompt given as token ids
    messages: list[dict] | None    # chat messages, content flattened to text
    max_tokens: int | None
    stream: bool
    include_usage: bool
    stop: list[str]
    ignore_eos: bool


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"malformed JSON in the request body: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ApiError(400, "the request body's JSON is nested too deeply") from None
    if b"\\ud" in raw.lower():   # a \uD800-\uDFFF escape: JSON allows a lone one, no text encoding does
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "the request body has a lone UTF-16 surrogate escape (\\ud800-\\udfff): not "
                           "text") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _num(body, name, lo, hi, lo_open=False):
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v > hi or v < lo or \
            (lo_open and v == lo):
        raise ApiError(400, f"{name} must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}", param=name)


def _int(body, name, lo=1):
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ApiError(400, f"{name} must be an integer >= {lo}, got {v!r}", param=name)
    return v


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if c is None and m.get("role") == "assistant":
        return ""
    if isinstance(c, list):
        parts = []
        for j, p in enumerate(c):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise ApiError(400, f"messages[{i}].content[{j}]: only text parts ({{'type': 'text', 'text': ...}}) "
                               f"are supported", param=f"messages[{i}].content")
            parts.append(p["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts, got {type(c).__name__}",
                   param=f"messages[{i}].content")


def validate(body: dict, kind: Kind, served_model: str) -> Parsed:
    allowed = COMMON | ONLY[kind]
    for k in body:
        if k not in allowed:
            raise ApiError(400, f"unknown parameter: {k!r}", param=k)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required (a string)", param="model")
    if model != served_model:
        raise ApiError(404, f"The model `{model}` does not exist (this server serves `{served_model}`)",
                       param="model", code="model_not_found")
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", param="stream")
    so = body.get("stream_options")
    include_usage = False
    if so is not None:
        if not stream:
            raise ApiError(400, "stream_options is only allowed when stream is true", param="stream_options")
        if not isinstance(so, dict) or set(so) - {"include_usage", "continuous_usage_stats"}:
            raise ApiError(400, f"stream_options must be an object with include_usage, got {so!r}",
                           param="stream_options")
        include_usage = so.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise ApiError(400, f"stream_options.include_usage must be true or false, got {include_usage!r}",
                           param="stream_options")
    for name in ("n", "best_of"):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or v != 1):
            raise ApiError(400, f"{name} must be 1 (one choice per request), got {v!r}", param=name)
    _num(body, "temperature", 0, 2)
    _num(body, "top_p", 0, 1, lo_open=True)
    _num(body, "presence_penalty", -2, 2)
    _num(body, "frequency_penalty", -2, 2)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"seed must be an integer, got {seed!r}", param="seed")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(400, f"user must be a string, got {user!r}", param="user")
    lb = body.get("logit_bias")
    if lb is not None and (not isinstance(lb, dict) or not all(isinstance(v, (int, float)) for v in lb.values())):
        raise ApiError(400, "logit_bias must map token ids to numbers", param="logit_bias")
    lp = body.get("logprobs")
    if lp not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise ApiError(400, "logprobs are not supported by this server", param="logprobs")
    for name in ("response_format", "tools", "tool_choice", "parallel_tool_calls", "suffix"):
        v = body.get(name)
        if v is not None and not (name == "response_format" and isinstance(v, dict) and v.get("type") == "text") \
                and not (name == "parallel_tool_calls" and isinstance(v, bool)) \
                and not (name == "tool_choice" and v == "none"):
            raise ApiError(400, f"{name} is not supported by this server", param=name)
    if body.get("echo") not in (None, False):
        raise ApiError(400, "echo is not supported by this server", param="echo")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, f"ignore_eos must be true or false, got {ignore_eos!r}", param="ignore_eos")
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise ApiError(400, f"stop must be a string or a list of at most 4 strings, got {stop!r}", param="stop")
    if any(not s for s in stops):
        raise ApiError(400, "stop sequences must not be empty", param="stop")
    mt_name = "max_completion_tokens" if kind is Kind.CHAT and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_tokens = _int(body, mt_name)
    text = ids = msgs = None
    if kind is Kind.COMPLETION:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]
        if isinstance(p, str):
            if not p:
                raise ApiError(400, "prompt must not be empty", param="prompt")
            text = p
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in p):
            ids = p
        elif isinstance(p, list) and len(p) > 1:
            raise ApiError(400, f"batched prompts ({len(p)} of them) are not supported: send one prompt per request",
                           param="prompt")
        else:
            raise ApiError(400, f"prompt must be a non-empty string or a list of token ids, got {type(p).__name__}",
                           param="prompt")
    else:
        ms = body.get("messages")
        if not isinstance(ms, list) or not ms:
            raise ApiError(400, "messages must be a non-empty list", param="messages")
        msgs = []
        for i, m in enumerate(ms):
            if not isinstance(m, dict):
                raise ApiError(400, f"messages[{i}] must be an object with role and content", param="messages")
            if m.get("role") not in ROLES:
                raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.get('role')!r}",
                               param=f"messages[{i}].role")
            msgs.append({"role": m["role"], "content": _content(m, i)})
    return Parsed(kind, text, ids, msgs, max_tokens, stream, include_usage, stops, ignore_eos)


def usage(end: End) -> dict:
    return {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.completion_tokens,
            "total_tokens": end.prompt_tokens + end.completion_tokens, "token_counts": end.usage_source}


def full_response(job, model: str, text: str, end: End) -> dict:
    if job.kind is Kind.CHAT:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": end.finish_reason}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": end.finish_reason}
        obj = "text_completion"
    return {"id": job.id, "object": obj, "created": int(job.created), "model": model, "choices": [choice],
            "usage": usage(end)}


def chunk(job, model: str, text: str | None, finish: str | None = None, role: bool = False,
          with_usage: bool = False) -> dict:
    if job.kind is Kind.CHAT:
        delta = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    out = {"id": job.id, "object": obj, "created": int(job.created), "model": model, "choices": [choice]}
    if with_usage:
        out["usage"] = None
    return out


def usage_chunk(job, model: str, end: End) -> dict:
    obj = "chat.completion.chunk" if job.kind is Kind.CHAT else "text_completion"
    return {"id": job.id, "object": obj, "created": int(job.created), "model": model, "choices": [],
            "usage": usage(end)}

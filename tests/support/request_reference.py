"""The request rendering as the dispatcher did it in Python before :mod:`cpbench._core.render`,
frozen here as the oracle of tests/test_render.py (an oracle sharing code with what it checks
would prove nothing). Not used by cpbench itself."""
from __future__ import annotations

import json

from cpbench.prompts import build_prompt
from cpbench.replaying.wire import VLLM_PRIORITY, header_block


def _json_str(text: str) -> str:
    # Plain ASCII text without quotes or backslashes is its own JSON string body.
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


def _prompt_json(prompt: str | None, input_tokens: int, row: int) -> str:
    # A built prompt is lower-case words of cpbench.prompts' vocabulary: it needs no escaping,
    # and skipping the check saves ~10 µs on a 1,000-token prompt.
    if prompt is None:
        return f'"{build_prompt(input_tokens, row)}"'
    return _json_str(prompt)


def request_body(
    kind: str,
    model_json: str,
    row: int,
    input_tokens: int,
    output_tokens: int | None,
    batch_size: int,
    prompt: str | None,
    priority: str,
    hints: str,
    messages_json: str | None = None,
    *,
    stream: bool = True,
) -> bytes:
    """The JSON body of one request, as bytes.

    ``model_json`` is the model name already JSON-quoted (the caller caches it per model).
    ``prompt`` null means a prompt of ``input_tokens`` words built by
    :func:`cpbench.prompts.build_prompt`, tagged with the trace ``row``. ``messages_json``
    (chat only) is a ready JSON array of messages (a session's turns), sent as it is.
    ``stream`` False asks chat and completions for one JSON body instead of SSE events.
    """
    extra = f',"priority":{VLLM_PRIORITY.get(priority, 1)}' if hints == "vllm" else ""
    if kind == "embedding":
        text = _prompt_json(prompt, input_tokens, row)
        inputs = ",".join([text] * max(int(batch_size), 1))
        return f'{{"model":{model_json},"input":[{inputs}]{extra}}}'.encode()
    text = _prompt_json(prompt, input_tokens, row)
    max_tokens = "" if output_tokens is None else f',"max_tokens":{int(output_tokens)}'
    if kind == "chat" and messages_json is not None:
        head = f'{{"model":{model_json},"messages":{messages_json}'
    elif kind == "chat":
        head = f'{{"model":{model_json},"messages":[{{"role":"user","content":{text}}}]'
    else:
        head = f'{{"model":{model_json},"prompt":{text}'
    streaming = ',"stream":true,"stream_options":{"include_usage":true}' if stream \
        else ',"stream":false'
    return (head + max_tokens + streaming + extra + "}").encode()


def encode(kind: str, priority: str, row: int, model: str, input_tokens: int,
           output_tokens: int, batch_size: int, slo_e2e_ms: float, prompt: str | None,
           messages_json: str | None, *, hints: str, stream: bool, host: str,
           bearer: str | None = None, path_prefix: str = "", query: str = "") -> bytes:
    """The whole request of one plan row, as ``Dispatcher._encode`` built it."""
    model_json = f'"{model}"' if model.isalnum() else json.dumps(model)
    body = request_body(kind, model_json, row, input_tokens,
                        None if output_tokens < 0 else output_tokens, batch_size, prompt,
                        priority, hints, messages_json, stream=stream)
    head = header_block(kind, host, bearer=bearer, priority=priority, hints=hints,
                        path_prefix=path_prefix, query=query)
    if hints == "sagellm":
        head = b"%sX-Request-ID: cpbench-%d\r\nX-SLO-Deadline-Ms: %s\r\n" % (
            head, row, b"%g" % slo_e2e_ms)
    return b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)

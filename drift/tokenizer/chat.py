"""Chat templates: the Jinja program a GGUF carries in `tokenizer.chat_template`.

A template is untrusted code from the model file, so it runs in Jinja's immutable sandbox.
The environment mirrors transformers' (`utils/chat_template_utils.py`): the same options,
globals, filters and input clean-up, so a prompt rendered here is the prompt the model saw in
training and the one `apply_chat_template(..., tokenize=False)` gives. Unlike transformers,
compiling and rendering are bounded: they run in a child process (`sandbox.py`) that is
killed past `TIMEOUT_S` and whose memory is capped, and the output stops at `MAX_CHARS`;
every failure is one `TemplateError` line.

A file without a template falls back to a small table of well-known formats by architecture.
"""

from __future__ import annotations

import atexit
import json
import pickle
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from drift.errors import TemplateError

TIMEOUT_S = 5.0  # seconds a compile or a render may take
MAX_CHARS = 1 << 22  # characters of output: far beyond any context
MAX_SOURCE = 1 << 20  # characters of template source

# Google's Gemma 3 instruction format, verbatim from the tokenizer_config.json of its -it models.
_GEMMA_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# FALLBACK templates, used only when the file has no `tokenizer.chat_template`:
# `general.architecture` -> the format the architecture's official instruct models use.
FALLBACK_TEMPLATES: dict[str, str] = {
    "gemma": _GEMMA_TEMPLATE,
    "gemma2": _GEMMA_TEMPLATE,
    "gemma3": _GEMMA_TEMPLATE,
}

# Names a message's reasoning goes by; templates read the first, gpt-oss ones read "thinking".
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplate:
    """A compiled chat template with the special-token variables of its model."""

    def __init__(self, source: str, variables: Mapping[str, str], fallback: bool = False):
        self.source = source
        self.fallback = fallback  # True: from FALLBACK_TEMPLATES, not from the model file
        self._variables = dict(variables)
        if len(source) > MAX_SOURCE:
            raise TemplateError(f"chat template is {len(source)} characters (at most {MAX_SOURCE})")
        SANDBOX.run(source, None, "chat template")  # compile errors show at load

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ChatTemplate | None:
        """The file's template, else the fallback for its architecture, else None."""
        tokens = metadata.get("tokenizer.ggml.tokens") or []
        variables = {}
        for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
            token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
            if isinstance(token_id, int) and 0 <= token_id < len(tokens):
                variables[f"{name}_token"] = tokens[token_id]
        source = metadata.get("tokenizer.chat_template")
        if isinstance(source, str) and source:
            return cls(source, variables)
        fallback = FALLBACK_TEMPLATES.get(metadata.get("general.architecture", ""))
        return None if fallback is None else cls(fallback, variables, fallback=True)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` ({"role", "content"} dicts), ending with the opening
        of the assistant's turn when `add_generation_prompt`."""
        # Like transformers: keys set to None are dropped (templates test for presence), and
        # the template sees plain JSON-like copies only.
        chat = [
            _alias_reasoning({k: _plain(v) for k, v in m.items() if v is not None})
            for m in messages
        ]
        context = dict(messages=chat, tools=None, documents=None,
                       add_generation_prompt=add_generation_prompt, **self._variables)
        return SANDBOX.run(self.source, context, "chat template")


class Sandbox:
    """The child process templates run in (`sandbox.py`), started on first use and again after
    it was killed; one request at a time."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    def run(self, source: str, context: dict[str, Any] | None, what: str,
            timeout: float | None = None, max_chars: int | None = None) -> str:
        """The rendered text (context None: compile only, ""); TemplateError on any failure."""
        timeout = TIMEOUT_S if timeout is None else timeout
        request = pickle.dumps({"source": source, "context": context,
                                "max_chars": MAX_CHARS if max_chars is None else max_chars})
        with self._lock:
            proc = self._start()
            reply: list[bytes | None] = []
            try:
                proc.stdin.write(len(request).to_bytes(8, "little") + request)
                proc.stdin.flush()
            except OSError:
                self._kill()
                raise TemplateError(f"{what}: its sandbox process ended") from None
            reader = threading.Thread(target=lambda: reply.append(_read_frame(proc.stdout)),
                                      daemon=True)
            reader.start()
            try:
                reader.join(timeout)
            except BaseException:  # Ctrl-C, an alarm: the child may still be at it
                self._kill()
                raise
            if reader.is_alive():
                self._kill()  # the pipe closes: the reader sees its end and returns
                reader.join()
                raise TemplateError(f"{what} did not finish in {timeout:g} s (a runaway loop?)")
            if not reply or reply[0] is None:
                self._kill()
                raise TemplateError(f"{what} crashed its sandbox process (out of memory?)")
        answer = json.loads(reply[0])
        if "error" in answer:
            raise TemplateError(f"{what} {answer['error']}")
        return answer["text"]

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            script = Path(__file__).with_name("sandbox.py")
            self._proc = subprocess.Popen(
                [sys.executable, "-P", "-s", str(script)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        return self._proc

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                pipe.close()
            self._proc = None

    def close(self) -> None:
        if self._proc is not None:
            try:
                self._proc.stdin.close()  # the child's loop ends
                self._proc.wait(timeout=1)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._kill()


def _read_frame(stream) -> bytes | None:
    head = _read_exactly(stream, 8)
    return None if head is None else _read_exactly(stream, int.from_bytes(head, "little"))


def _read_exactly(stream, n: int) -> bytes | None:
    chunks, left = [], n
    try:
        while left:
            chunk = stream.read(left)
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
    except (OSError, ValueError):  # closed under us by _kill
        return None
    return b"".join(chunks)


SANDBOX = Sandbox()


def _plain(value: Any) -> Any:
    """A copy made of JSON types only: objects callers put in messages may have methods the
    sandbox does not know to be dangerous."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):  # np.bool_(False) must not become a truthy placeholder
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}



"""The Python API.

    import drift
    llm = drift.load("smollm2-135m")            # or a .gguf path; device="cpu" | "cuda" | "auto"
    for piece in llm.generate("The capital of France is", max_tokens=16, temperature=0):
        print(piece, end="", flush=True)
    print(llm.chat([{"role": "user", "content": "Hi!"}], stream=False))
"""

from __future__ import annotations

import os
from typing import Iterator

from drift.runtime.engine import Engine
from drift.runtime.generate import GenerationStats, stream
from drift.runtime.sampler import SamplerConfig


def load(model: str | os.PathLike | None = None, device: str | None = "auto",
         ctx: int | None = None, progress: bool = False) -> "LLM":
    """Open a model: a .gguf path, a short name (fetched on first use) or org/repo/file.gguf."""
    from drift.hub import resolve_model

    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path or a model name, got {_kind(model)}")
    if device is not None and not isinstance(device, str):
        raise TypeError(f"device must be a string or None, got {_kind(device)}")
    if ctx is not None:
        _check_int("ctx", ctx, lo=1)

    path = resolve_model(None if model is None else os.fspath(model), progress=progress)
    return LLM(Engine(path, device=device, ctx=ctx))


class LLM:
    def __init__(self, engine: Engine):
        from drift.tokenizer import ChatTemplate, Tokenizer

        self.engine = engine
        metadata = engine.file.metadata
        self.tokenizer = Tokenizer.from_gguf(metadata)
        self.chat_template = ChatTemplate.from_metadata(metadata)
        self.last_stats = GenerationStats()

    @property
    def config(self):
        return self.engine.config

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt; a BOS the text (a rendered template) already carries is not
        added twice."""
        bos = self.tokenizer.bos_id
        carries_bos = bos is not None and text.startswith(self.tokenizer.token_text(bos))
        return self.tokenizer.encode(text, add_bos=False if carries_bos else None)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            from drift.errors import UnsupportedError

            raise UnsupportedError(
                f"{self.engine.path.name} has no chat template; use raw generation instead"
            )
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt)

    def generate(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 repeat_penalty: float = 1.0, seed: int | None = None,
                 stop: list[str] | None = None, stream: bool = True) -> Iterator[str] | str:
        """Continue `prompt` exactly as given (no chat template)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {_kind(prompt)}")
        sampling = SamplerConfig(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed)
        stop, stream = _check_common(max_tokens, stop, stream)
        pieces = self._stream(self.encode_prompt(prompt), sampling, max_tokens, stop)
        return pieces if stream else "".join(pieces)

    def chat(self, messages: list[dict], *, max_tokens: int = 256, temperature: float = 0.8,
             top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
             repeat_penalty: float = 1.0, seed: int | None = None,
             stop: list[str] | None = None, stream: bool = True) -> Iterator[str] | str:
        """Answer the conversation `messages` ([{"role": ..., "content": ...}]) through the
        model's chat template; the KV cache keeps the shared prefix between calls."""
        _check_messages(messages)
        sampling = SamplerConfig(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed)
        stop, stream = _check_common(max_tokens, stop, stream)
        prompt = self.encode_prompt(self.render_chat(messages))
        pieces = self._stream(prompt, sampling, max_tokens, stop)
        return pieces if stream else "".join(pieces)

    def _stream(self, prompt: list[int], sampling: SamplerConfig, max_tokens: int,
                stop: list[str]) -> Iterator[str]:
        self.last_stats = GenerationStats()
        return stream(self.engine, self.tokenizer, prompt, sampling, max_tokens, stop,
                      self.tokenizer.stop_ids, self.last_stats)


# -- argument checks: the caller's mistake named at the boundary, not deep inside -------------


def _kind(value: object) -> str:
    return f"{type(value).__name__} {value!r:.40}"


def _check_int(name: str, value: object, lo: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {_kind(value)}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")


def _check_common(max_tokens: object, stop: object, stream: object) -> tuple[list[str], bool]:
    _check_int("max_tokens", max_tokens)
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise TypeError(f"stop must be a string or a list of strings, got {_kind(stop)}")
    if not isinstance(stream, bool):
        raise TypeError(f"stream must be True or False, got {_kind(stream)}")
    return list(stop), stream


def _check_messages(messages: object) -> None:
    if not isinstance(messages, (list, tuple)):
        hint = " (a list of {'role': ..., 'content': ...} dicts)"
        raise TypeError(f"messages must be a list of messages{hint}, got {_kind(messages)}")
    if not messages:
        raise ValueError("messages must not be empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content', got "
                            f"{_kind(m)}")
        if "role" not in m:
            raise ValueError(f"messages[{i}] has no 'role'")
        if not isinstance(m["role"], str):
            raise TypeError(f"messages[{i}]['role'] must be a string, got {_kind(m['role'])}")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise TypeError(f"messages[{i}]['content'] must be a string (or a list of parts), "
                            f"got {_kind(content)}")

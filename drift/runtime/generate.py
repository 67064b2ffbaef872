"""Decoding: the one generator behind the CLI, the Python API and (later) the server.

`generate_tokens` is the loop: it takes the sampled tokens from a producer (`_drawn`: prefill,
then a decode step once each token is on the host; `_drawn_ahead`: each step queued on the
device before the token before it is read) and ends the answer (stop token, max_tokens, a
full context); `stream` turns its tokens into text, cutting at stop strings and end-of-turn tokens, and
fills a `GenerationStats` as it goes.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

from drift.errors import ContextOverflowError, InvalidArgumentError, NumericalError
from drift.runtime.engine import Engine, common_prefix
from drift.runtime.sampler import Sampler, SamplerConfig, nonfinite_message


class TextStream(Protocol):
    def feed(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


class Detokenizer(Protocol):
    def stream(self) -> TextStream: ...


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose K/V were already in the cache
    prefill_s: float = 0.0
    generated_tokens: int = 0
    decode_s: float = 0.0
    decode_steps: int = 0  # the steps timed in decode_s (a step that ends on a stop counts)
    ttft_s: float = 0.0  # from the call to the first generated token
    # "stop" (EOS or stop string), "length" (max_tokens), "context" (the context is full)
    finish_reason: str | None = None
    token_times: list[float] = field(default_factory=list, repr=False)

    @property
    def prefill_tps(self) -> float:
        computed = self.prompt_tokens - self.reused_tokens
        return computed / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        # the first token comes out of prefill; the others each cost one decode step
        steps = self.decode_steps
        return steps / self.decode_s if self.decode_s > 0 and steps > 0 else 0.0

    def summary(self, load_s: float | None = None) -> str:
        parts = []
        if load_s is not None:
            parts.append(f"load {load_s:.2f} s")
        parts += [
            f"prompt {self.prompt_tokens} tok",
            f"prefill {self.prefill_tps:.1f} tok/s",
            f"decode {self.decode_tps:.1f} tok/s ({self.generated_tokens} tok)",
            f"ttft {self.ttft_s * 1000:.0f} ms",
        ]
        return " | ".join(parts)


def generate_tokens(
    engine: Engine,
    prompt: list[int],
    sampler: Sampler,
    max_tokens: int,
    stop_ids: Iterable[int] = (),
    stats: GenerationStats | None = None,
) -> Iterator[int]:
    """Yield sampled tokens until a stop token (not yielded), max_tokens or a full context."""
    stats = stats if stats is not None else GenerationStats()
    if not prompt:
        raise InvalidArgumentError("the prompt is empty")
    if max_tokens < 0:
        raise InvalidArgumentError(f"max tokens must be >= 0, got {max_tokens}")
    if len(prompt) >= engine.ctx:
        raise ContextOverflowError(
            f"the prompt is {len(prompt)} tokens; the context holds {engine.ctx} "
            f"(raise --ctx, up to {engine.config.ctx_train})"
        )
    stop_ids = frozenset(stop_ids)
    t0 = time.perf_counter()
    stats.prompt_tokens = len(prompt)
    stats.reused_tokens = min(common_prefix(engine.cached_tokens, prompt), len(prompt) - 1)
    # The backend samples on its device where it can (only the token id comes back).
    device_pick = engine.backend.sampler(sampler.config)
    history = list(prompt)
    if max_tokens == 0:  # the prompt cached, nothing drawn
        engine.prefill(prompt, device_pick is None)
        stats.prefill_s = time.perf_counter() - t0
        stats.finish_reason = "length"
        return
    if decodes_ahead(engine, device_pick):
        drawn = _drawn_ahead(engine, prompt, history, device_pick, max_tokens, stats, t0)
    else:
        drawn = _drawn(engine, prompt, history, device_pick or sampler, device_pick is None,
                       stats, t0)
    with closing(drawn):  # (closed, a producer waits out what it has queued)
        for token in drawn:
            if token in stop_ids:
                stats.finish_reason = "stop"
                return
            stats.generated_tokens += 1
            history.append(token)
            yield token
            if stats.generated_tokens >= max_tokens:
                stats.finish_reason = "length"
                return
            if len(history) >= engine.ctx:
                stats.finish_reason = "context"  # the context is full
                return


def _drawn(engine: Engine, prompt: list[int], history: list[int], pick, to_host: bool,
           stats: GenerationStats, t0: float) -> Iterator[int]:
    """The sampled tokens, one decode step at a time: each step runs once the token before
    it is on the host and in `history` (which `generate_tokens` extends)."""
    logits = engine.prefill(prompt, to_host)
    stats.prefill_s = time.perf_counter() - t0
    since = t0
    while True:
        token = pick(logits, history)
        _arrived(stats, token, t0, since)
        yield token
        since = time.perf_counter()
        logits = engine.forward([token], len(history) - 1, to_host)


def _arrived(stats: GenerationStats, token: int, t0: float, since: float) -> float:
    """Account for a sampled token on the host: the prefill's end (the first token, timed
    from t0) or a decode step's (from `since`). A GPU runs asynchronously: a step has ended
    only when its token is on the host, so each is timed up to the sampled token."""
    if token < 0:  # a device sampler's answer to logits that are not finite
        raise NumericalError(nonfinite_message())
    now = time.perf_counter()
    if stats.generated_tokens == 0:
        stats.ttft_s = stats.prefill_s = now - t0
    else:
        stats.decode_s += now - since
        stats.decode_steps += 1
    stats.token_times.append(now)
    return now


def decodes_ahead(engine: Engine, device_pick) -> bool:
    """Whether decode queues each step before the token of the one before is read: a device
    sampler that stores its token into the next step's input (`_SamplerKernels.submit`:
    greedy, and top-k up to TOPK_MAX without a repetition penalty), on the
    backend that runs the engine's programs (not one inside a hybrid split); off with
    DRIFT_DECODE_AHEAD=0."""
    setting = os.environ.get("DRIFT_DECODE_AHEAD", "1")
    if setting not in ("0", "1"):
        raise InvalidArgumentError(f"DRIFT_DECODE_AHEAD={setting!r}: 0 or 1")
    return (setting == "1" and hasattr(device_pick, "submit")
            and device_pick.backend is engine.backend)


def _drawn_ahead(engine: Engine, prompt: list[int], history: list[int], pick,
                 max_tokens: int, stats: GenerationStats, t0: float) -> Iterator[int]:
    """`_drawn` with each decode step queued before the token it runs is read back: the
    token goes from the sampler's kernel into the step's input on the device, so the host
    records step n + 1 while the device computes step n (on WebGPU recording a step costs
    about as much as running it). A step is queued only where `generate_tokens` will go on
    after the token before it (max_tokens, the context); one queued for a token that ends
    the answer anyway (a stop token, an error, the caller closing) is wasted, waited out
    when this generator closes, and the cache holds that token too, as its record says."""
    decode = engine.program(1)  # bound before the prefill's submission stores into it
    ticket = pick.submit(engine.prefill(prompt, to_host=False), decode)
    last, ahead = t0, None
    try:
        while True:
            position = len(history)
            ahead = None
            if stats.generated_tokens + 1 < max_tokens and position + 1 < engine.ctx:
                ahead = pick.submit(engine.forward_fed(position), decode)
            token = pick.collect(ticket)
            last = _arrived(stats, token, t0, last)
            if ahead is not None:
                engine.settle(position, token)
            yield token
            ticket, ahead = ahead, None
    finally:
        if ahead is not None:
            pick.collect(ahead)


def stream(
    engine: Engine,
    tokenizer: Detokenizer,
    prompt: list[int],
    sampling: SamplerConfig,
    max_tokens: int = 256,
    stop: Iterable[str] = (),
    stop_ids: Iterable[int] = (),
    stats: GenerationStats | None = None,
) -> Iterator[str]:
    """Yield pieces of generated text; their concatenation is the whole answer.

    The tokenizer's incremental decoder never returns half a UTF-8 character. Text that could
    be the start of a stop string is held back until it is known not to be one.
    """
    stats = stats if stats is not None else GenerationStats()
    stops = [s for s in stop if s]
    decoder = tokenizer.stream()
    emitted = 0  # characters of `text` already yielded
    text = ""
    for token in generate_tokens(engine, prompt, Sampler(sampling), max_tokens, stop_ids, stats):
        text += decoder.feed(token)
        cut = _first_stop(text, stops, emitted)
        if cut is not None:
            if cut > emitted:
                yield text[emitted:cut]
            stats.finish_reason = "stop"
            return
        safe = len(text) - _held_back(text, stops)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    text += decoder.flush()
    cut = _first_stop(text, stops, emitted)
    if cut is not None:
        text, stats.finish_reason = text[:cut], "stop"
    if len(text) > emitted:
        yield text[emitted:]


def _first_stop(text: str, stops: list[str], emitted: int) -> int | None:
    """Index of the earliest stop string that starts in the unemitted part, if any."""
    found = None
    for s in stops:
        i = text.find(s, max(0, emitted - len(s) + 1))
        if i >= 0 and (found is None or i < found):
            found = i
    return found


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the beginning of a stop string."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold

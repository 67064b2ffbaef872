"""An Engine: one model file on one backend, with its KV cache.

It compiles a graph per call size (the prompt length for prefill, 1 for decode), keeps the
tokens whose keys and values the cache holds, and reuses their longest common prefix, so a
chat that resends its history only computes the new turn.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from drift.backends import Backend, Program, create_backend
from drift.backends.base import weight_stacks
from drift.errors import ContextOverflowError, InvalidArgumentError
from drift.formats.gguf import GGUFFile, open_gguf
from drift.ir import Graph, Role
from drift.models import ModelConfig, build_graph, config_from_gguf

DEFAULT_CTX = 4096
PREFILL_CHUNK = 512  # tokens per prefill call: bounds the activations of a long prompt
MAX_PROGRAMS = 8  # compiled graphs kept, least recently used dropped


def gguf_dtype(qtype_name: str) -> str:
    """The IR dtype of a stored tensor: plain types lower-case, quant types by their name."""
    return qtype_name.lower() if qtype_name in ("F32", "F16", "BF16", "F64") else qtype_name


class Engine:
    def __init__(
        self,
        path: str | os.PathLike,
        device: str | None = None,
        ctx: int | None = None,
        backend: Backend | None = None,
        gpu_mem: int | None = None,
        sparsity: float = 0.0,
        offload: str = "neurons",
        predictor: int = 0,
    ):
        t0 = time.perf_counter()
        self.path = Path(path)
        self.file: GGUFFile = open_gguf(self.path)
        shapes = {n: t.shape for n, t in self.file.tensors.items()}
        self.config: ModelConfig = config_from_gguf(self.file.metadata, shapes, self.path.name)
        if ctx is not None and ctx < 1:
            raise InvalidArgumentError(f"--ctx must be >= 1, got {ctx}")
        self.ctx = min(DEFAULT_CTX, self.config.ctx_train) if ctx is None else ctx
        if self.ctx > self.config.ctx_train:
            raise InvalidArgumentError(
                f"--ctx {self.ctx} is beyond the {self.config.ctx_train} positions "
                f"{self.path.name} was trained for"
            )
        self.weight_dtypes = {n: gguf_dtype(t.qtype.name) for n, t in self.file.tensors.items()}
        self.backend = backend or create_backend(device)
        if gpu_mem is not None or sparsity or self._does_not_fit():
            from drift.hybrid.backend import hybrid_backend

            self.backend = hybrid_backend(self.backend, self.file, self.path, self.config,
                                          self.ctx, gpu_mem, sparsity, offload, predictor)
        # The decode graph after the passes says which weights its kernels read together
        # (stacked matmuls): the backend lays those out side by side as it loads them.
        decode = self.backend.lower(self.graph(1)).graph
        self.backend.load_weights(self.file, self.graph(1).by_role(Role.WEIGHT),
                                  weight_stacks(decode))
        self._programs: OrderedDict[tuple[int, bool], Program] = OrderedDict()
        self.cached_tokens: list[int] = []  # tokens whose K/V are in the cache, in order
        self.load_seconds = time.perf_counter() - t0

    def _does_not_fit(self) -> bool:
        """Whether the model is larger than what the GPU has free (then it runs hybrid)."""
        free = self.backend.free_memory()
        if free is None or self.backend.device().kind != "gpu":
            return False
        from drift.hybrid.backend import ACTIVATION_MARGIN, ffn_bytes, fixed_gpu_bytes

        need = (fixed_gpu_bytes(self.file, self.config, self.ctx, self.backend.kv_dtype)
                + ffn_bytes(self.file) + ACTIVATION_MARGIN)
        return need > free

    def graph(self, n_tokens: int, all_logits: bool = False) -> Graph:
        """The graph of one call over `n_tokens` tokens; with `all_logits` it returns every
        position's logits (S, V), not only the last one's (perplexity)."""
        return build_graph(self.config, self.weight_dtypes, n_tokens, self.ctx,
                           kv_dtype=self.backend.kv_dtype, all_logits=all_logits)

    def program(self, n_tokens: int, all_logits: bool = False) -> Program:
        key = (n_tokens, all_logits)
        if key in self._programs:
            self._programs.move_to_end(key)
            return self._programs[key]
        program = self.backend.compile(self.graph(n_tokens, all_logits))
        self._programs[key] = program
        if len(self._programs) > MAX_PROGRAMS:
            self._programs.popitem(last=False)
        return program

    def run(self, tokens: list[int], start: int, to_host: bool = True,
            all_logits: bool = False) -> dict:
        """Run `tokens` at positions start.. and return every output of the program (by
        name), the cache updated. `forward` is this for the logits."""
        if start + len(tokens) > self.ctx:
            raise ContextOverflowError(
                f"{start + len(tokens)} tokens do not fit the context of {self.ctx}"
            )
        ids = np.asarray(tokens, dtype=np.int32)
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise InvalidArgumentError(f"token id out of range [0, {self.config.vocab_size})")
        positions = np.arange(start, start + len(tokens), dtype=np.int32)
        feeds = {"tokens": ids, "positions": positions}
        program = self.program(len(tokens), all_logits)
        # Positions from `start` on are overwritten: forget them first, so that a run that does
        # not finish (Ctrl-C, an error) never leaves the cache claiming tokens it lost.
        self.cached_tokens = self.cached_tokens[:start]
        out = program.run(feeds) if to_host else program.run(feeds, to_host=False)
        self.cached_tokens = self.cached_tokens[:start] + list(tokens)
        return out

    def forward(self, tokens: list[int], start: int, to_host: bool = True,
                all_logits: bool = False) -> np.ndarray:
        """Run `tokens` at positions start.. and return the last position's logits (V,), or
        with `all_logits` every position's (S, V): a numpy array, or with `to_host=False` the
        backend's own tensor (for its sampler)."""
        logits = self.run(tokens, start, to_host, all_logits)["logits"]
        return logits if all_logits else logits.reshape(-1)

    def forward_fed(self, start: int):
        """One decode step at position `start` whose token is on the device already, stored
        into the step's input by the sampler that drew it (`_SamplerKernels.submit`): the
        logits as the backend's tensor. The cache's record holds -1 at `start` (matching no
        token) until `settle` names the token."""
        if start + 1 > self.ctx:
            raise ContextOverflowError(f"{start + 1} tokens do not fit the context of {self.ctx}")
        program = self.program(1)
        self.cached_tokens = self.cached_tokens[:start]
        out = program.run({"positions": np.array([start], np.int32)}, to_host=False,
                          fed=frozenset({"tokens"}))
        self.cached_tokens.append(-1)
        return out["logits"].reshape(-1)

    def settle(self, position: int, token: int) -> None:
        """The token a `forward_fed` step at `position` ran, now read back."""
        if position < len(self.cached_tokens) and self.cached_tokens[position] == -1:
            self.cached_tokens[position] = token

    def prefill(self, tokens: list[int], to_host: bool = True) -> np.ndarray:
        """Bring the cache to hold `tokens`, computing only what is not already there; return
        the logits after the last token."""
        if len(tokens) > self.ctx:
            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens; the context holds {self.ctx} "
                f"(raise --ctx, up to {self.config.ctx_train})"
            )
        reuse = common_prefix(self.cached_tokens, tokens)
        reuse = min(reuse, len(tokens) - 1)  # recompute at least the last token for its logits
        logits = None
        for start in range(reuse, len(tokens), PREFILL_CHUNK):
            logits = self.forward(tokens[start : start + PREFILL_CHUNK], start, to_host)
        assert logits is not None
        return logits

    def reset(self) -> None:
        self.cached_tokens = []


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n

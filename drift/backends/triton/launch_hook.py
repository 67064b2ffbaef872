"""Counting Triton kernel launches (for the launch term of `drift profile`'s prediction)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def _counting():
    import triton

    box = [0]

    def hook(*args, **kwargs) -> None:
        box[0] += 1

    chain = getattr(getattr(getattr(triton, "knobs", None), "runtime", None),
                    "launch_enter_hook", None)
    if chain is not None and hasattr(chain, "add"):  # Triton >= 3.4: a HookChain
        chain.add(hook)
        try:
            yield box
        finally:
            chain.remove(hook)
        return
    from triton.compiler import CompiledKernel  # older Triton: one hook attribute

    old = CompiledKernel.launch_enter_hook
    CompiledKernel.launch_enter_hook = hook
    try:
        yield box
    finally:
        CompiledKernel.launch_enter_hook = old


def launch_counter():
    """A context manager yielding a one-element list that counts launches while open; None
    where this Triton offers no launch hook (the interpreter launches through no hook)."""
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    return _counting()

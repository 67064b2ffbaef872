"""Graph passes: fusion, tensor virtualization (layout) and memory planning, run in the order
of `pipeline.py` by a backend's `compile`."""

from drift.passes.context import Capabilities, PassContext
from drift.passes.pipeline import Compiled, Pass, dump_graph, run_pipeline

__all__ = ["Capabilities", "Compiled", "Pass", "PassContext", "dump_graph", "run_pipeline"]

"""Hybrid CPU-GPU execution by neuron hotness (PowerInfer-style, for SwiGLU/GeGLU models):
calibration of FFN neuron activity (`calibrate`), the GPU placement solver (`placement`), the
FFN split as a graph rewrite plus derived weights (`split`), the CPU's cold-neuron kernels
(`drift.backends.cpu.native`, `kernels.c`) and the backend that runs a model over a GPU backend and the
CPU (`backend`). docs/hybrid.md describes the whole.
"""

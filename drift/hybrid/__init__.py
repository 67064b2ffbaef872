"""Hybrid CPU-GPU execution by neuron hotness (PowerInfer-style), its foundations: calibration
of FFN neuron activity (`calibrate`), the GPU placement solver (`placement`) and the FFN
neuron permutation (`permute`). The split execution itself is not built yet (docs/hybrid.md).
"""

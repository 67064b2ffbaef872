"""The kernel layer the portable GPU backends share (design decision 9): templates written
once (`templates.py`, `quant.py`) over accessors (`access.py`) and a renderer base
(`renderer.py`) that each API's renderer table turns into its language (WGSL in
`backends/webgpu/renderer.py`, OpenCL C in `backends/opencl/renderer.py`); `gpu.py` is the
backend and program both APIs run, over a small `Runtime` each provides."""

"""Load time of a model on a portable GPU backend (Engine construction: read, repack into the
quant planes, upload), with the quant planes written by the committed `QuantBlockPlanes.write`
("new") or by the byte-slice copy it replaced in session 22 ("old"), one process a run:

    python bench/load_planes.py MODEL.gguf opencl new
"""

import sys, time
import numpy as np
import drift.passes.storage as st
if sys.argv[3] == "old":
    def write(self, objs, x):
        R, nb = self.tile_rows, self.blocks_per_row
        B = st.block_size(self.dtype)[1]
        blocks = np.zeros((self.tiles * R, nb, B), dtype=np.uint8)
        blocks[: self.shape[0]] = np.asarray(x).view(np.uint8).reshape(self.shape[0], nb, B)
        tiled = blocks.reshape(self.tiles, R, nb, B).transpose(0, 2, 1, 3)
        for obj, (_, off, size, _) in zip(objs, self.fields):
            obj[...] = tiled[..., off : off + size]
    st.QuantBlockPlanes.write = write
from drift.runtime.engine import Engine
t = time.perf_counter(); e = Engine(sys.argv[1], device=sys.argv[2], ctx=256)
print(f"{sys.argv[2]} {sys.argv[3]} load {time.perf_counter() - t:.2f} s")

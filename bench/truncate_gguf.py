"""Copy a llama-family GGUF keeping only its first N blocks: real weights, real tokenizer,
a smaller file (so SmolLM2's 98 MB fits the 64 MiB a device call may carry).

    python bench/truncate_gguf.py IN.gguf OUT.gguf N
"""

from __future__ import annotations

import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter


def main(src: str, dst: str, n_blocks: int) -> None:
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = f.contents()
        if key == f"{arch}.block_count":
            value = n_blocks
        vtype = f.types[0]
        sub = f.types[1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(key, value, vtype, sub)
    keep = [t for t in r.tensors
            if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < n_blocks]
    for t in keep:
        data = np.asarray(t.data).view(np.uint8)
        w.add_tensor_info(t.name, data.shape, np.dtype(np.uint8), data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in keep:
        w.write_tensor_data(np.ascontiguousarray(np.asarray(t.data).view(np.uint8)))
    w.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

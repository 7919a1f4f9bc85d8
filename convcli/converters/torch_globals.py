"""PyTorch process-wide switches that exporters flip, restored when the export is done.

Exporting runs in the same process as measuring. A switch left flipped by an export (the multi-head-attention
fast path is the one found: tracing breaks on the fused kernel) changes how the source runs afterwards, so a
transformer source would be timed on its slow path on runs that export and on its fast path on cached runs,
and every speedup would depend on the cache. Each exporter therefore flips switches only inside
``torch_export_globals()``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from convcli.core.lazy import require


def _dynamo_config() -> Any:
    """``torch._dynamo.config`` when something has imported it already (importing it only to read it is slow)."""
    return sys.modules.get("torch._dynamo.config")


@contextlib.contextmanager
def torch_export_globals() -> Iterator[None]:
    """Disable the MHA fast path for the block, and on leaving restore it together with every other global the
    exporters are known to touch or could touch: grad mode, intra-op thread count, default dtype, and
    ``torch._dynamo.config`` (when it was loaded before the block; a config first imported inside the block
    starts from its defaults anyway)."""
    torch = require("torch")
    fastpath = torch.backends.mha.get_fastpath_enabled()
    grad = torch.is_grad_enabled()
    threads = torch.get_num_threads()
    dtype = torch.get_default_dtype()
    dynamo = _dynamo_config()
    dynamo_before = dynamo.get_config_copy() if dynamo is not None else None
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA fast path breaks tracing
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        torch.set_grad_enabled(grad)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        if dynamo is not None and dynamo_before is not None:
            now = dynamo.get_config_copy()
            for key, value in dynamo_before.items():
                if key in now and now[key] != value:
                    setattr(dynamo, key, value)

"""Measurements that are like for like: exporters leave PyTorch's globals as they found them, models are timed
together in round-robin rounds, every number says where it was measured, and speed flags ignore noise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convcli.converters.torch_globals import torch_export_globals

# --- exporters restore PyTorch's process-wide switches ---------------------------------------------------------


def test_onnx_export_of_a_transformer_restores_the_mha_fast_path(cli, catalogue, tmp_path: Path) -> None:
    """Exporting used to switch the fast path off for good, so the source was timed on its slow path only on
    runs that exported (uncached), inflating speedups."""
    torch.backends.mha.set_fastpath_enabled(True)
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    res = cli("convert", *catalogue["tiny_transformer"].args(), "--to", "onnx", "-o", tmp_path / "out",
              "--no-latency", "--threads", "2")
    assert res.exit_code == 0, res.output
    assert res.report(tmp_path / "out")["steps"][0]["name"] == "OnnxFromPytorch"
    assert torch.backends.mha.get_fastpath_enabled() is True
    assert torch.is_grad_enabled() is grad and torch.get_num_threads() == threads


def test_export_globals_restore_whatever_was_set_before() -> None:
    before = torch.get_num_threads()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with torch_export_globals():
            torch.set_num_threads(1)
            torch.set_grad_enabled(False)
            assert torch.backends.mha.get_fastpath_enabled() is False
        assert torch.backends.mha.get_fastpath_enabled() is False  # restored, not forced on
        assert torch.is_grad_enabled() and torch.get_num_threads() == before
        torch.backends.mha.set_fastpath_enabled(True)
        with pytest.raises(RuntimeError), torch_export_globals():
            assert torch.backends.mha.get_fastpath_enabled() is False
            raise RuntimeError("the exporter failed")
        assert torch.backends.mha.get_fastpath_enabled() is True
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
        torch.set_num_threads(before)

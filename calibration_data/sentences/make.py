"""Tokenize sentences.txt into calibration and parity arrays for recipes/models/minilm.py.

calib.npz: the first 128 sentences; parity.npz: the other 70 (never calibrated on). Both keyed by input name
(input_ids, attention_mask; int64, padded to SEQ tokens). Run: python calibration_data/sentences/make.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEQ = 64
N_CALIB = 128


def main() -> None:
    sys.path.insert(0, str(HERE.parents[1] / "recipes" / "models"))
    from minilm import tokenizer

    sentences = [s.strip() for s in (HERE / "sentences.txt").read_text(encoding="utf-8").splitlines() if s.strip()]
    enc = tokenizer()(sentences, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    arrays = {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
    np.savez(HERE / "calib.npz", **{k: v[:N_CALIB] for k, v in arrays.items()})
    np.savez(HERE / "parity.npz", **{k: v[N_CALIB:] for k, v in arrays.items()})
    lengths = arrays["attention_mask"].sum(1)
    print(f"{len(sentences)} sentences -> calib {N_CALIB}, parity {len(sentences) - N_CALIB}; "
          f"seq {SEQ}, tokens per sentence {lengths.min()}..{lengths.max()}")


if __name__ == "__main__":
    main()

"""Makes the bundled data and model, deterministically, from scikit-learn's digits (no download):

- calibration_data/digits/{train,val}/<class>/*.png   labelled splits (80/20, stratified, seed 0)
- calibration_data/digits/calib/*.png                 100 unlabelled training images for INT8 calibration
- recipes/models/digits_cnn.pt                        trained weights of digits_cnn.DigitsCNN

Run: python recipes/models/train_digits.py   (about 10 s on 2 cores)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from digits_cnn import WEIGHTS, build  # noqa: E402

DATA = ROOT / "calibration_data" / "digits"


def to_pixels(images: np.ndarray) -> np.ndarray:
    """Digits are 0..16; store as 0..255 8-bit grayscale."""
    return np.clip(np.round(images * 255.0 / 16.0), 0, 255).astype(np.uint8)


def write_split(name: str, pixels: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    folder = DATA / name
    shutil.rmtree(folder, ignore_errors=True)
    for px, label, idx in zip(pixels, labels, indices, strict=True):
        out = folder / str(int(label))
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px, mode="L").save(out / f"{int(idx):04d}.png", optimize=True)


def main() -> None:
    digits = load_digits()
    pixels = to_pixels(digits.images)
    idx = np.arange(len(pixels))
    tr, va = train_test_split(idx, test_size=0.2, random_state=0, stratify=digits.target)
    write_split("train", pixels[tr], digits.target[tr], tr)
    write_split("val", pixels[va], digits.target[va], va)
    calib = DATA / "calib"
    shutil.rmtree(calib, ignore_errors=True)
    calib.mkdir(parents=True)
    for i in tr[:100]:
        Image.fromarray(pixels[i], mode="L").save(calib / f"{int(i):04d}.png", optimize=True)

    torch.manual_seed(0)
    x = torch.from_numpy(pixels[tr].astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(digits.target[tr]).long()
    xv = torch.from_numpy(pixels[va].astype(np.float32) / 255.0).unsqueeze(1)
    yv = torch.from_numpy(digits.target[va]).long()
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _epoch in range(25):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[b]), y[b])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xv).argmax(1) == yv).float().mean().item()
    torch.save(model.state_dict(), WEIGHTS)
    print(f"validation accuracy {acc * 100:.2f}% on {len(xv)} images; weights -> {WEIGHTS}")


if __name__ == "__main__":
    main()

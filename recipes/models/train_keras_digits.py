"""Trains the bundled Keras digits CNN on the bundled PNG splits (made by train_digits.py), deterministically:

- reads calibration_data/digits/train and val (8x8 grayscale PNGs, label = sub-folder name), scaled /255,
  laid out NHWC (N, 8, 8, 1): TensorFlow's own layout, the way convcli's recipe feeds it
- writes recipes/models/keras_digits.keras (Keras 3 archive, about 70 kB, no optimizer state)

Run: python recipes/models/train_keras_digits.py   (about 15 s on 2 cores)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "calibration_data" / "digits"
OUT = HERE / "keras_digits.keras"


def read_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 8, 8, 1) float32 in [0, 1] and integer labels, in file-name order."""
    images, labels = [], []
    for folder in sorted((DATA / name).iterdir(), key=lambda p: int(p.name)):
        for png in sorted(folder.glob("*.png")):
            images.append(np.asarray(Image.open(png).convert("L"), dtype=np.float32) / 255.0)
            labels.append(int(folder.name))
    return np.stack(images)[..., None], np.asarray(labels, dtype=np.int64)


def build(keras: object) -> object:
    """A small CNN: two 3x3 convolutions, global pooling, a dense classifier with 10 logits."""
    layers = keras.layers  # type: ignore[attr-defined]
    inputs = keras.Input(shape=(8, 8, 1), name="image")  # type: ignore[attr-defined]
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(32, activation="relu")(x)
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="keras_digits")  # type: ignore[attr-defined]


def main() -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    x, y = read_split("train")
    xv, yv = read_split("val")
    model = build(keras)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=30, shuffle=True, verbose=0)
    _, acc = model.evaluate(xv, yv, verbose=0)
    clean = build(keras)  # the same layers, never compiled: the file holds no optimizer state
    clean.set_weights(model.get_weights())
    clean.save(OUT)
    print(f"validation accuracy {acc * 100:.2f}% on {len(xv)} images; model -> {OUT} "
          f"({OUT.stat().st_size / 1000:.0f} kB)")


if __name__ == "__main__":
    main()

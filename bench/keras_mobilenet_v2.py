"""Write keras.applications.MobileNetV2 (weights=None: nothing is downloaded) to the .keras file given.

    .venv/bin/python bench/keras_mobilenet_v2.py bench/out/keras_mobilenet_v2.keras

With random weights and BatchNorm's initial statistics (mean 0, variance 1) the activations of MobileNetV2
shrink layer by layer to ~1e-11: every output is the same, and parity would compare constants (it did: every
artifact "matched" with error 0, and int8 rounded the constant to 0). So each BatchNorm's moving statistics are
set, in order, to the batch statistics of its input on random images (data-dependent initialisation), and the
head returns logits (classifier_activation=None): outputs that differ per input, as a trained model's do.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(path: str) -> None:
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000,
                                           classifier_activation=None)
    images = np.random.default_rng(0).uniform(0, 1, size=(8, 224, 224, 3)).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            x = keras.Model(model.input, layer.input)(images).numpy()
            gamma, beta, _, _ = layer.get_weights()
            axes = tuple(range(x.ndim - 1))
            layer.set_weights([gamma, beta, x.mean(axis=axes), x.var(axis=axes) + 1e-3])
    logits = model(images).numpy()
    print(f"logits std over classes {logits.std(axis=1).mean():.3f}, across images {logits.std(axis=0).mean():.3f}")
    model.save(path)


if __name__ == "__main__":
    main(sys.argv[1])

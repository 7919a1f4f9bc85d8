"""Write keras.applications.MobileNetV2 (weights=None: nothing is downloaded) to the .keras file given.

    .venv/bin/python bench/keras_mobilenet_v2.py bench/out/keras_mobilenet_v2.keras
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(path: str) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
    model.save(path)


if __name__ == "__main__":
    main(sys.argv[1])

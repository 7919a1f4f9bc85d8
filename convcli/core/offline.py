"""Process settings that keep a convcli run offline and quiet, applied once at CLI start-up, before any
backend is imported: no telemetry, no hub downloads, no TensorFlow log noise."""

from __future__ import annotations

import os

# Each entry is a backend's own documented (or source-level) switch; setdefault keeps a user's choice.
OFFLINE_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's C++ logging (cuInit noise on CPU machines)
    "HF_HUB_OFFLINE": "1",  # never reach the Hugging Face hub
    "NNCF_CI": "1",  # nncf/telemetry/wrapper.py: replaces NNCF's telemetry with a stub
    "KMP_WARNINGS": "0",
}


def apply_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)

"""Process settings that keep a convcli run offline and quiet, applied once at CLI start-up, before any
backend is imported: no telemetry, no hub downloads, no TensorFlow log noise."""

from __future__ import annotations

import os
import sys

# Each entry is a backend's own documented (or source-level) switch; setdefault keeps a user's choice.
OFFLINE_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's C++ logging (cuInit noise on CPU machines)
    "HF_HUB_OFFLINE": "1",  # never reach the Hugging Face hub
    "NNCF_CI": "1",  # nncf/telemetry/wrapper.py: replaces NNCF's telemetry with a stub
    "KMP_WARNINGS": "0",
    # ONNX Runtime 1.32's OneDs telemetry (libonnxruntime: OneDsTelemetry) uploads to
    # mobile.events.data.microsoft.com from a background thread of any process holding a session for a few
    # seconds, on Linux too; onnxruntime.disable_telemetry_events() does not stop it, this variable does
    # (measured with strace: 4 DNS lookups in 20 s without it, none with it).
    "ORT_DISABLE_TELEMETRY": "1",
}

# Telemetry packages that phone home as soon as their importer loads them, and that have no environment
# switch of their own. ``import openvino`` imports openvino.tools.ovc, whose __init__ starts an
# openvino_telemetry session (a DNS lookup of the analytics host and a client-id file under ~/intel) before
# any of our code runs; its only documented opt-out (`opt_in_out --opt_out`) writes to the user's home.
# The CI=true switch it also honours changes PyTorch's behaviour (torch/_functorch/config.py), so it is not
# used. Marking the module as not importable makes every importer take its own "package not installed"
# branch: openvino.tools.ovc falls back to its telemetry_stub, nncf to NNCFTelemetryStub.
TELEMETRY_MODULES = ("openvino_telemetry",)


def block_telemetry_imports() -> list[str]:
    """Make the TELEMETRY_MODULES unimportable in this process (idempotent).

    Returns the modules that were already imported before the block (their importer may have sent
    telemetry already); an empty list means the block is in force for all of them.
    """
    late = []
    for name in TELEMETRY_MODULES:
        if sys.modules.get(name, None) is not None:
            late.append(name)
        else:
            sys.modules[name] = None  # type: ignore[assignment]  # Python's documented "import fails" marker
    return late


def apply_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    block_telemetry_imports()

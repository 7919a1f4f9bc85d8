"""Format-neutral core: formats, the step and runner interfaces, the registry, the planner and errors.

Nothing in here imports a backend package (torch, onnxruntime, openvino, ...) at module level.
"""

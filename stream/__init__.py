"""ahstream: stream."""

import models  # noqa: F401  (first: its __init__ turns ONNX Runtime's telemetry off)

"""ahstream: models."""

import os

# ONNX Runtime (1.32) writes a device id and a queue of telemetry events under
# ~/.cache/Microsoft and $TMPDIR as soon as it is imported, unless this is set: nothing is
# written that the user did not ask for. The user's own setting wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

"""ahstream: stream."""

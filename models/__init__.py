"""ahstream: models."""

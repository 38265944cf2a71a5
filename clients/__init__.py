"""ahstream: clients."""

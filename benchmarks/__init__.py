"""ahstream: benchmarks."""

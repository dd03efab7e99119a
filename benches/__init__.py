"""runwarden's benchmark runner: `python -m benches [--smoke]`.

Measures, side by side in one run, what the README promises: the interference of
GPU sampling and health checks with inference code, the cost of one NVML sample, the proxy's
overhead against nginx and a direct connection, streaming, detection latency and footprint.
Prints a table and rewrites `benches/RESULTS.md`. The Rust hot paths are in `benches/core.rs`
(`cargo bench`).
"""

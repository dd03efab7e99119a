"""runwarden's benchmark runner: `python -m benches [--smoke]`.

Measures, side by side in one run, what the README and SPEC P2 promise: the interference of
GPU sampling and health checks with inference code, the cost of one NVML sample, the proxy's
speed and CPU per request against nginx and a direct connection, streaming, WebSocket and gRPC
against the app direct, detection latency, footprint, and the front door (HTTP/1's list and
HTTP/2's attacks, against nginx). Prints a table and rewrites `benches/RESULTS.md`. The Rust
hot paths are in `benches/core.rs` (`cargo bench`).
"""

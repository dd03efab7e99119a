//! A fake NVML driver for tests (being written).

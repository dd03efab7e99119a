//! The allocator of the core's threads: mimalloc. The data plane allocates on every request
//! (hyper's buffers, headers, futures), and mimalloc costs it about half of what glibc's
//! malloc does (benches/RESULTS.md). Python's own objects keep Python's allocator.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

//! Criterion benches of the Rust core's hot paths: one NVML sample of 8 GPUs through the
//! fake driver, one scheduler decision, and the event path from a core thread to the reader.
//!
//! The fake `libnvidia-ml.so.1` must be built first (`make fake-nvml`, or
//! `python -m runwarden.testing build`); `BENCH_FAKE_NVML_LIBRARY` names another copy.

use std::ffi::OsStr;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use runwarden::events::EventQueue;
use runwarden::nvml::read::Gpu;
use runwarden::nvml::sample::GpuSample;
use runwarden::nvml::watchdog::Watch;
use runwarden::policy::Policy;
use runwarden::scheduler::{Action, Scheduler, Traffic};
use runwarden::settings::GpuSettings;
use runwarden::settings::HealthSettings;
use runwarden::verdict::{Event, ProbeReport, Reason, Verdict};

const GPUS: u32 = 8;

fn fake_library() -> PathBuf {
    if let Some(path) = std::env::var_os("BENCH_FAKE_NVML_LIBRARY") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let target = if target.is_absolute() {
        target
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(target)
    };
    let library = target.join("fake-nvml").join("libnvidia-ml.so.1");
    assert!(
        library.is_file(),
        "{} is missing: build the fake NVML driver first (`make fake-nvml`)",
        library.display()
    );
    library
}

/// Eight healthy GPUs in a state file the fake driver reads; the file lives as long as the
/// bench process (the driver re-reads it only when it changes). Beside it, the change
/// counter `runwarden.testing` writes, so the fake's periodic check of the file costs what
/// it costs under the Python benchmarks.
fn write_state() -> PathBuf {
    let gpus: Vec<serde_json::Value> = (0..GPUS)
        .map(|i| {
            serde_json::json!({
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": format!("GPU-00000000-0000-4000-8000-{i:012x}"),
                "temperature": 40 + i,
                "gpu_util": 90,
                "memory_util": 40,
                "power_mw": 650_000,
                "memory": {"total": 80u64 << 30, "reserved": 512u64 << 20,
                           "used": 60u64 << 30, "free": null},
            })
        })
        .collect();
    let state = serde_json::json!({"driver_version": "550.54.15", "gpus": gpus});
    let path = std::env::temp_dir().join(format!("runwarden-bench-{}.json", std::process::id()));
    std::fs::write(&path, state.to_string()).expect("write the fake NVML state file");
    std::fs::write(generation(&path), [0u8; 8]).expect("write the fake NVML change counter");
    path
}

fn generation(state: &Path) -> PathBuf {
    let mut path = state.as_os_str().to_owned();
    path.push(".generation");
    PathBuf::from(path)
}

/// The part of the sampler's `sample_all` that its `cost` times: the count, then every GPU.
fn read_all<'nvml>(
    nvml: &'nvml Nvml,
    gpus: &mut [Gpu<'nvml>],
    watch: &Watch,
) -> (Result<u32, NvmlError>, Vec<GpuSample>) {
    let count = watch.call("nvmlDeviceGetCount_v2", || nvml.device_count());
    let samples = gpus.iter_mut().map(|gpu| gpu.read(nvml, watch)).collect();
    (count, samples)
}

fn nvml_sample(c: &mut Criterion) {
    let state = write_state();
    // Set before NVML is loaded and before any thread of ours reads the environment.
    std::env::set_var("RUNWARDEN_FAKE_NVML_STATE", &state);
    let library = fake_library();
    let nvml = Nvml::builder()
        .lib_path(OsStr::new(&library))
        .init()
        .expect("load the fake NVML driver");
    let watch = Watch::new("bench");
    let count = nvml.device_count().expect("device count");
    assert_eq!(count, GPUS, "the fake should report the state file's GPUs");
    let mut gpus: Vec<Gpu<'_>> = (0..count).map(|i| Gpu::find(&nvml, i, &watch)).collect();

    let mut read_all = || read_all(&nvml, &mut gpus, &watch);
    let checked = |(count, samples): (Result<u32, _>, Vec<GpuSample>)| {
        assert!(samples.iter().all(|s| s.errors.is_empty()), "{samples:?}");
        black_box(count.ok());
        samples.len()
    };
    c.bench_function("nvml: read 8 GPUs (every G1 field)", |b| {
        b.iter(|| checked(read_all()))
    });

    // The sampler thread sleeps between samples, so each sample starts with cold caches
    // and branch predictors: time one sample after each (untimed) sleep.
    let mut cold = c.benchmark_group("nvml cold");
    cold.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    cold.bench_function("read 8 GPUs after a 20 ms sleep", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                thread::sleep(Duration::from_millis(20));
                let began = Instant::now();
                let read = read_all();
                total += began.elapsed();
                checked(read);
            }
            total
        })
    });
    cold.finish();

    // What the sampler thread does per sample: read, then judge against the policy.
    let mut policy = Policy::new(GpuSettings::default());
    let started = Instant::now();
    c.bench_function("nvml: read + judge 8 GPUs", |b| {
        b.iter(|| {
            let samples: Vec<_> = gpus.iter_mut().map(|gpu| gpu.read(&nvml, &watch)).collect();
            let now = started.elapsed();
            let findings: usize = samples
                .iter()
                .map(|s| policy.judge_sample(now, s).len())
                .sum();
            black_box(findings)
        })
    });
    drop(nvml);
    let _ = std::fs::remove_file(generation(&state));
    let _ = std::fs::remove_file(state);
}

fn passed() -> ProbeReport {
    ProbeReport {
        status: Some(200),
        error: None,
        latency: Duration::from_micros(300),
        local: false,
    }
}

fn scheduler_decision(c: &mut Criterion) {
    let settings = HealthSettings {
        start_period_seconds: 0,
        period_seconds: 0.1,
        ..HealthSettings::default()
    }
    .validate()
    .expect("valid settings");
    let period = settings.period();
    let traffic = Traffic {
        in_flight: 4,
        last_progress: Some(Duration::ZERO),
        last_resumed: None,
    };
    // Warm: the history is full, so every decision also evicts one outcome.
    let mut scheduler = Scheduler::new(settings.clone(), Duration::ZERO);
    let mut now = Duration::ZERO;
    let cycle = |scheduler: &mut Scheduler, now: &mut Duration| {
        *now += period;
        let started = scheduler.tick(*now, traffic);
        let Some(Action::StartCheck { id, .. }) = started.first() else {
            panic!("a due check should start: {started:?}");
        };
        let finished = scheduler.finish(*id, passed(), *now + Duration::from_millis(1), traffic);
        black_box(finished.len())
    };
    for _ in 0..settings.history_size + 10 {
        cycle(&mut scheduler, &mut now);
    }

    c.bench_function("scheduler: tick (nothing due)", |b| {
        let quiet = now + period / 2;
        b.iter(|| black_box(scheduler.tick(black_box(quiet), traffic)))
    });
    c.bench_function("scheduler: next_deadline", |b| {
        b.iter(|| black_box(scheduler.next_deadline(black_box(traffic))))
    });
    c.bench_function("scheduler: tick starts a check + finish judges it", |b| {
        b.iter(|| cycle(&mut scheduler, &mut now))
    });
    c.bench_function("scheduler: gateway trigger (rate-limited answer)", |b| {
        b.iter(|| {
            black_box(scheduler.trigger(runwarden::verdict::Trigger::Gateway, black_box(now)))
        })
    });
}

fn replacement() -> Event {
    Event::Verdict(Verdict {
        reason: Reason::GpuFault,
        detail: "xid on GPU 3: XID 79".to_owned(),
        age: Duration::from_secs(1),
    })
}

/// Block until `fd` is readable, as the asyncio loop's selector does.
fn wait_readable(fd: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd on the stack; the fd stays open while the queue lives.
        let ready = unsafe { libc::poll(&mut pfd, 1, 5_000) };
        assert!(ready >= 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR));
        if ready > 0 {
            return;
        }
    }
}

fn event_path(c: &mut Criterion) {
    c.bench_function("events: push + drain, one thread", |b| {
        let queue = EventQueue::new().expect("event queue");
        b.iter_batched(
            replacement,
            |event| {
                queue.push(event);
                black_box(queue.drain())
            },
            BatchSize::SmallInput,
        )
    });

    // A core thread pushes; this thread sleeps in poll() on the wake socket, wakes, and
    // drains. Timed from just before the push to the drained event in hand.
    c.bench_function("events: push on a thread -> poll -> drain", |b| {
        let queue = Arc::new(EventQueue::new().expect("event queue"));
        let base = Instant::now();
        let pushed_at = Arc::new(AtomicU64::new(0));
        let (go, told) = mpsc::channel::<()>();
        let producer = {
            let (queue, pushed_at) = (Arc::clone(&queue), Arc::clone(&pushed_at));
            // Sleeps on the channel between pushes, as a sampler sleeps between samples.
            thread::spawn(move || {
                while told.recv().is_ok() {
                    let event = replacement();
                    pushed_at.store(base.elapsed().as_nanos() as u64, Ordering::Release);
                    queue.push(event);
                }
            })
        };
        let fd = queue.fd();
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                go.send(()).expect("producer alive");
                wait_readable(fd);
                let events = queue.drain();
                let done = base.elapsed();
                assert_eq!(events.len(), 1);
                let pushed = Duration::from_nanos(pushed_at.load(Ordering::Acquire));
                total += done.saturating_sub(pushed);
            }
            total
        });
        drop(go);
        producer.join().expect("producer thread");
    });
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = short();
    targets = nvml_sample, scheduler_decision, event_path
}
criterion_main!(benches);

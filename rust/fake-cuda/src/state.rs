//! The fake NVML driver's state file, read as the CUDA fake needs it: each GPU's name, UUID,
//! MIG instances, whether it is lost, and its `cuda` faults. Read afresh on each call that needs it: the
//! canary makes a few calls a minute.

use std::time::Duration;

use serde_json::Value;

pub const STATE_ENV: &str = "RUNWARDEN_FAKE_NVML_STATE";

/// One GPU as CUDA sees it.
#[derive(Debug, Clone, Default)]
pub struct Gpu {
    pub name: String,
    /// NVML's text form, "GPU-…".
    pub uuid_text: String,
    pub uuid: [u8; 16],
    /// Its MIG instances' UUIDs ("MIG-…", `mig_uuids`, as the fake NVML has them): a GPU with
    /// any is in MIG mode, and CUDA runs only on an instance (see `visible`).
    pub mig_uuids: Vec<String>,
    pub lost: bool,
    pub faults: Faults,
}

/// A GPU's `cuda` object.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub wrong: bool,
    pub hang: Option<Duration>,
    pub error: Option<u32>,
    pub oom: bool,
}

/// The GPUs of the state file, in order: with no state file named (or none there yet) the
/// fake NVML's default, one healthy GPU; none if the file cannot be read or parsed.
pub fn gpus() -> Vec<Gpu> {
    let path = std::env::var_os(STATE_ENV).filter(|p| !p.is_empty());
    let Some(path) = path.filter(|p| std::path::Path::new(p).exists()) else {
        return vec![gpu(0, &Value::Null)];
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(state) = serde_json::from_str::<Value>(&text) else {
        return Vec::new();
    };
    let Some(list) = state.get("gpus").and_then(Value::as_array) else {
        // The fake NVML's default state: one healthy GPU.
        return vec![gpu(0, &Value::Null)];
    };
    list.iter().enumerate().map(|(i, g)| gpu(i, g)).collect()
}

fn gpu(index: usize, g: &Value) -> Gpu {
    let text = |key: &str| g.get(key).and_then(Value::as_str).map(str::to_owned);
    let uuid = text("uuid").unwrap_or_else(|| format!("GPU-00000000-0000-4000-8000-{index:012x}"));
    let cuda = g.get("cuda").cloned().unwrap_or(Value::Null);
    Gpu {
        name: text("name").unwrap_or_else(|| "NVIDIA H100 80GB HBM3".into()),
        uuid: uuid_bytes(&uuid),
        uuid_text: uuid,
        mig_uuids: g
            .get("mig_uuids")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        lost: g.get("lost").and_then(Value::as_bool).unwrap_or(false),
        faults: Faults {
            wrong: cuda.get("wrong").and_then(Value::as_bool).unwrap_or(false),
            hang: cuda
                .get("hang_seconds")
                .and_then(Value::as_f64)
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64),
            error: cuda
                .get("error")
                .and_then(Value::as_u64)
                .and_then(|e| u32::try_from(e).ok())
                .filter(|e| *e != 0),
            oom: cuda.get("oom").and_then(Value::as_bool).unwrap_or(false),
        },
    }
}

/// "GPU-xxxxxxxx-xxxx-…" or "MIG-xxxxxxxx-…" as CUDA's 16 bytes (NVML's text form, CUDA's
/// binary one).
pub fn uuid_bytes(uuid: &str) -> [u8; 16] {
    let hex: String = uuid
        .trim_start_matches("GPU-")
        .trim_start_matches("MIG-")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    out
}

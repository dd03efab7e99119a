//! Which devices CUDA shows this process: the state's GPUs narrowed by `CUDA_VISIBLE_DEVICES`
//! as the process had it at `cuInit`, the way the real driver reads it once.
//!
//! - Unset: every GPU not in MIG mode, in order.
//! - Set: its entries in order, each an index, a `GPU-…` UUID (or a prefix of one) or a
//!   `MIG-…` UUID; the first entry that names nothing ends the list (CUDA's rule), and an empty
//!   value shows nothing.
//! - A GPU in MIG mode (with `mig_uuids` in the state) is never a CUDA device itself: only its
//!   instances are, and only when named by `MIG-<uuid>`. The real driver, unset, may pick one
//!   instance by itself; the fake takes the strict reading so that a test shows what naming
//!   the instance does.

use std::sync::OnceLock;

use crate::state::{self, uuid_bytes};

/// CUDA_VISIBLE_DEVICES as read by the first `cuInit`.
static SELECTION: OnceLock<Option<String>> = OnceLock::new();

/// Remember the process's CUDA_VISIBLE_DEVICES (the first call wins, as in CUDA).
pub fn read_environment() {
    SELECTION.get_or_init(|| std::env::var("CUDA_VISIBLE_DEVICES").ok());
}

/// One CUDA device: a GPU of the state, or one MIG instance of it (`gpu` is the GPU's place
/// in the state either way, so its faults apply to its instances).
#[derive(Debug, Clone)]
pub struct Device {
    pub gpu: usize,
    pub uuid: [u8; 16],
    pub name: String,
    pub lost: bool,
}

/// The devices, in CUDA's order.
pub fn devices() -> Vec<Device> {
    let gpus = state::gpus();
    let whole = |i: usize| {
        let g = &gpus[i];
        (g.mig_uuids.is_empty()).then(|| Device {
            gpu: i,
            uuid: g.uuid,
            name: g.name.clone(),
            lost: g.lost,
        })
    };
    let Some(Some(selection)) = SELECTION.get() else {
        return (0..gpus.len()).filter_map(whole).collect();
    };
    let mut out: Vec<Device> = Vec::new();
    for entry in selection.split(',').map(str::trim) {
        let found = if let Ok(index) = entry.parse::<usize>() {
            (index < gpus.len()).then_some(index).and_then(whole)
        } else if entry.starts_with("MIG-") {
            gpus.iter().enumerate().find_map(|(i, g)| {
                g.mig_uuids.iter().any(|m| m == entry).then(|| Device {
                    gpu: i,
                    uuid: uuid_bytes(entry),
                    name: format!("{} MIG", g.name),
                    lost: g.lost,
                })
            })
        } else if entry.starts_with("GPU-") {
            let mut matches = (0..gpus.len()).filter(|&i| gpus[i].uuid_text.starts_with(entry));
            match (matches.next(), matches.next()) {
                (Some(i), None) => whole(i),
                _ => None, // none, or a prefix of several
            }
        } else {
            None
        };
        match found {
            Some(device) if out.iter().all(|d| d.uuid != device.uuid) => out.push(device),
            Some(_) => {}
            None => break,
        }
    }
    out
}

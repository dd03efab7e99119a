//! Which GPUs this runner watches (SPEC G5): the node's GPUs narrowed to the ones asked for,
//! by index, by `GPU-…` UUID, or by `MIG-…` UUID (a MIG device stands for its GPU). NVML
//! enumerates every GPU of the node and knows nothing of `CUDA_VISIBLE_DEVICES`; the
//! selectors come from `--gpus` or, unset, from the environment (Python decides which).

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::watchdog::Watch;

/// One watched GPU: its index and UUID as NVML has them now, and the selector that chose it.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub index: u32,
    pub uuid: Option<String>,
    pub selector: String,
}

/// The watched GPUs (each once, in index order) and the selectors that matched none, each
/// with why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub chosen: Vec<Chosen>,
    pub missing: Vec<(String, String)>,
}

/// Resolve `selectors` (None: every GPU) against the `count` GPUs NVML sees.
pub fn resolve(nvml: &Nvml, count: u32, selectors: Option<&[String]>, watch: &Watch) -> Selection {
    let mut selection = Selection::default();
    let all: Vec<String>;
    let selectors = match selectors {
        Some(list) => list,
        None => {
            all = (0..count).map(|i| i.to_string()).collect();
            &all
        }
    };
    for selector in selectors {
        match index_of(nvml, count, selector, watch) {
            Ok(index) => {
                if selection.chosen.iter().all(|c| c.index != index) {
                    let uuid = watch
                        .call("nvmlDeviceGetUUID", || {
                            nvml.device_by_index(index).and_then(|d| d.uuid())
                        })
                        .ok();
                    selection.chosen.push(Chosen {
                        index,
                        uuid,
                        selector: selector.clone(),
                    });
                }
            }
            Err(why) => selection.missing.push((selector.clone(), why)),
        }
    }
    selection.chosen.sort_by_key(|c| c.index);
    selection
}

fn index_of(nvml: &Nvml, count: u32, selector: &str, watch: &Watch) -> Result<u32, String> {
    if let Ok(index) = selector.parse::<u32>() {
        return if index < count {
            Ok(index)
        } else {
            Err(format!("index {index}, but NVML sees {count} GPU(s)"))
        };
    }
    let shown = |e: NvmlError| match e {
        NvmlError::NotFound => "no GPU has this UUID".to_owned(),
        other => other.to_string(),
    };
    let device = watch
        .call("nvmlDeviceGetHandleByUUID", || {
            nvml.device_by_uuid(selector)
        })
        .map_err(shown)?;
    let device = if selector.starts_with("MIG-") {
        watch
            .call("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", || {
                device.mig_parent_device()
            })
            .map_err(|e| format!("its GPU cannot be found: {e}"))?
    } else {
        device
    };
    watch
        .call("nvmlDeviceGetIndex", || device.index())
        .map_err(|e| format!("nvmlDeviceGetIndex: {e}"))
}

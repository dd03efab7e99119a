//! The GPU series of `/metrics` (SPEC G4), from the latest sample of the watched GPUs.
//!
//! `--gpu-metrics dcgm` (the default) names, types and labels them as NVIDIA's dcgm-exporter
//! does, so its dashboards work unchanged (NVIDIA's official one selects every panel by
//! `Hostname`): `DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-…",pci_bus_id="…",device="nvidia0",
//! modelName="…",Hostname="…",DCGM_FI_DRIVER_VERSION="…"}`. Counters are counters, as its
//! `default-counters.csv` declares them (docs/dcgm-counters.csv holds the lines runwarden
//! claims, with the date they were taken), and, as there, their samples carry no `_total`.
//! On a node whose dcgm-exporter is scraped already, `runwarden` names the same series
//! `runwarden_gpu_*` (Prometheus' conventions: units, `_total`, snake-case labels) so nothing
//! is counted twice under one name, and `off` leaves them out. The profiling series
//! (`DCGM_FI_PROF_*`) need DCGM itself and are not emitted.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::core::Desc;
use prometheus::proto::{MetricFamily, MetricType};

use super::live::family;
use crate::nvml::sample::GpuSample;
use crate::settings::GpuMetrics;
use crate::worker::lock;

const MIB: u64 = 1 << 20;
const DCGM_LABELS: [&str; 7] = [
    "gpu",
    "UUID",
    "pci_bus_id",
    "device",
    "modelName",
    "Hostname",
    "DCGM_FI_DRIVER_VERSION",
];
const OWN_LABELS: [&str; 7] = [
    "gpu",
    "uuid",
    "pci_bus_id",
    "device",
    "model_name",
    "hostname",
    "driver_version",
];

type Read = fn(&GpuSample) -> Option<f64>;

struct Series {
    dcgm: &'static str,
    own: &'static str,
    kind: MetricType,
    help: &'static str,
    read: Read,
}

macro_rules! series {
    ($dcgm:literal, $own:literal, $kind:ident, $help:literal, $read:expr) => {
        Series {
            dcgm: $dcgm,
            own: $own,
            kind: MetricType::$kind,
            help: $help,
            read: $read,
        }
    };
}

fn float<T: Into<f64>>(value: Option<T>) -> Option<f64> {
    value.map(Into::into)
}

fn large(value: Option<u64>) -> Option<f64> {
    value.map(|v| v as f64)
}

/// Each series: dcgm-exporter's name, runwarden's, its type and help, how to read it from
/// a sample (None: the GPU does not report it). The XID series comes from findings.
const SERIES: [Series; 23] = [
    series!(
        "DCGM_FI_DEV_SM_CLOCK",
        "runwarden_gpu_sm_clock_mhz",
        GAUGE,
        "SM clock frequency (in MHz).",
        |s| float(s.sm_clock_mhz)
    ),
    series!(
        "DCGM_FI_DEV_MEM_CLOCK",
        "runwarden_gpu_memory_clock_mhz",
        GAUGE,
        "Memory clock frequency (in MHz).",
        |s| float(s.memory_clock_mhz)
    ),
    series!(
        "DCGM_FI_DEV_MEMORY_TEMP",
        "runwarden_gpu_memory_temperature_celsius",
        GAUGE,
        "Memory temperature (in C).",
        |s| float(s.memory_temperature_c)
    ),
    series!(
        "DCGM_FI_DEV_GPU_TEMP",
        "runwarden_gpu_temperature_celsius",
        GAUGE,
        "GPU temperature (in C).",
        |s| float(s.temperature_c)
    ),
    series!(
        "DCGM_FI_DEV_POWER_USAGE",
        "runwarden_gpu_power_watts",
        GAUGE,
        "Power draw (in W).",
        |s| s.power_mw.map(|mw| f64::from(mw) / 1000.0)
    ),
    series!(
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "runwarden_gpu_energy_millijoules",
        COUNTER,
        "Total energy consumption since boot (in mJ).",
        |s| large(s.energy_mj)
    ),
    series!(
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "runwarden_gpu_pcie_replays",
        COUNTER,
        "Total number of PCIe retries.",
        |s| float(s.pcie_replays)
    ),
    series!(
        "DCGM_FI_DEV_GPU_UTIL",
        "runwarden_gpu_utilization_percent",
        GAUGE,
        "GPU utilization (in %).",
        |s| float(s.gpu_utilization)
    ),
    series!(
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "runwarden_gpu_memory_utilization_percent",
        GAUGE,
        "Memory utilization (in %).",
        |s| float(s.memory_utilization)
    ),
    series!(
        "DCGM_FI_DEV_FB_FREE",
        "runwarden_gpu_memory_free_mib",
        GAUGE,
        "Framebuffer memory free (in MiB).",
        |s| { Some(((s.memory_total_bytes? - s.memory_used_bytes?) / MIB) as f64) }
    ),
    series!(
        "DCGM_FI_DEV_FB_USED",
        "runwarden_gpu_memory_used_mib",
        GAUGE,
        "Framebuffer memory used (in MiB).",
        |s| s.memory_used_bytes.map(|b| (b / MIB) as f64)
    ),
    series!(
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
        "runwarden_gpu_clock_throttle_reasons",
        GAUGE,
        "Current clock throttle reasons (bitmask).",
        |s| large(s.throttle_reasons)
    ),
    series!(
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "runwarden_gpu_ecc_corrected_volatile",
        COUNTER,
        "Total number of single-bit volatile ECC errors.",
        |s| large(s.ecc.volatile_corrected)
    ),
    series!(
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "runwarden_gpu_ecc_uncorrected_volatile",
        COUNTER,
        "Total number of double-bit volatile ECC errors.",
        |s| large(s.ecc.volatile_uncorrected)
    ),
    series!(
        "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
        "runwarden_gpu_ecc_corrected_aggregate",
        COUNTER,
        "Total number of single-bit persistent ECC errors.",
        |s| large(s.ecc.aggregate_corrected)
    ),
    series!(
        "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
        "runwarden_gpu_ecc_uncorrected_aggregate",
        COUNTER,
        "Total number of double-bit persistent ECC errors.",
        |s| large(s.ecc.aggregate_uncorrected)
    ),
    series!(
        "DCGM_FI_DEV_RETIRED_SBE",
        "runwarden_gpu_retired_pages_single_bit",
        COUNTER,
        "Total number of retired pages due to single-bit errors.",
        |s| s.retired_pages.as_ref().map(|p| p.single_bit as f64)
    ),
    series!(
        "DCGM_FI_DEV_RETIRED_DBE",
        "runwarden_gpu_retired_pages_double_bit",
        COUNTER,
        "Total number of retired pages due to double-bit errors.",
        |s| s.retired_pages.as_ref().map(|p| p.double_bit as f64)
    ),
    series!(
        "DCGM_FI_DEV_RETIRED_PENDING",
        "runwarden_gpu_retired_pages_pending",
        COUNTER,
        "Total number of pages pending retirement.",
        |s| s
            .retired_pages
            .as_ref()
            .map(|p| f64::from(u8::from(p.pending)))
    ),
    series!(
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "runwarden_gpu_remapped_rows_uncorrectable",
        COUNTER,
        "Number of remapped rows for uncorrectable errors",
        |s| s.remapped_rows.as_ref().map(|r| r.uncorrectable as f64)
    ),
    series!(
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "runwarden_gpu_remapped_rows_correctable",
        COUNTER,
        "Number of remapped rows for correctable errors",
        |s| s.remapped_rows.as_ref().map(|r| r.correctable as f64)
    ),
    series!(
        "DCGM_FI_DEV_ROW_REMAP_PENDING",
        "runwarden_gpu_row_remap_pending",
        GAUGE,
        "Whether remapping of rows is pending",
        |s| s
            .remapped_rows
            .as_ref()
            .map(|r| f64::from(u8::from(r.pending)))
    ),
    series!(
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "runwarden_gpu_row_remap_failure",
        GAUGE,
        "Whether remapping of rows has failed",
        |s| s
            .remapped_rows
            .as_ref()
            .map(|r| f64::from(u8::from(r.failure)))
    ),
];
const XID: Series = series!(
    "DCGM_FI_DEV_XID_ERRORS",
    "runwarden_gpu_last_xid",
    GAUGE,
    "Value of the last XID error encountered.",
    |_| None
);

/// The latest samples of the watched GPUs and the last XID of each.
pub struct GpuSeries {
    mode: GpuMetrics,
    hostname: String,
    driver_version: Box<dyn Fn() -> Option<String> + Send + Sync>,
    samples: Mutex<BTreeMap<u32, GpuSample>>,
    last_xid: Mutex<BTreeMap<u32, u64>>,
    descs: Vec<Desc>,
}

impl GpuSeries {
    pub fn new(
        mode: GpuMetrics,
        driver_version: Box<dyn Fn() -> Option<String> + Send + Sync>,
    ) -> GpuSeries {
        let descs = match mode {
            GpuMetrics::Off => Vec::new(),
            _ => SERIES
                .iter()
                .chain([&XID])
                .map(|s| {
                    let (name, labels) = naming(mode, s);
                    let labels = labels.iter().map(|l| (*l).to_owned()).collect();
                    Desc::new(name, s.help.into(), labels, Default::default()).expect("valid")
                })
                .collect(),
        };
        GpuSeries {
            mode,
            hostname: hostname(),
            driver_version,
            samples: Mutex::default(),
            last_xid: Mutex::default(),
            descs,
        }
    }

    pub fn samples(&self, samples: &[GpuSample]) {
        *lock(&self.samples) = samples.iter().map(|s| (s.index, s.clone())).collect();
    }

    pub fn xid(&self, gpu: u32, xid: u64) {
        lock(&self.last_xid).insert(gpu, xid);
    }
}

/// A series' name (runwarden's counters with `_total`) and label names in `mode`.
fn naming(mode: GpuMetrics, series: &Series) -> (String, &'static [&'static str; 7]) {
    match mode {
        GpuMetrics::Dcgm => (series.dcgm.to_owned(), &DCGM_LABELS),
        _ if series.kind == MetricType::COUNTER => (format!("{}_total", series.own), &OWN_LABELS),
        _ => (series.own.to_owned(), &OWN_LABELS),
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub struct Collector(pub std::sync::Arc<GpuSeries>);

impl prometheus::core::Collector for Collector {
    fn desc(&self) -> Vec<&Desc> {
        self.0.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series = &self.0;
        if series.mode == GpuMetrics::Off {
            return Vec::new();
        }
        let samples = lock(&series.samples).clone();
        if samples.is_empty() {
            return Vec::new();
        }
        let driver = (series.driver_version)().unwrap_or_default();
        let labels = |s: &GpuSample| {
            let names = naming(series.mode, &XID).1;
            let values = [
                s.index.to_string(),
                s.uuid.as_deref().unwrap_or("").to_owned(),
                s.pci_bus_id.as_deref().unwrap_or("").to_owned(),
                format!("nvidia{}", s.index),
                s.name.as_deref().unwrap_or("").to_owned(),
                series.hostname.clone(),
                driver.clone(),
            ];
            names.iter().copied().zip(values).collect::<Vec<_>>()
        };
        let mut families: Vec<MetricFamily> = SERIES
            .iter()
            .map(|s| {
                let rows = samples
                    .values()
                    .filter_map(|sample| Some((labels(sample), (s.read)(sample)?)));
                family(&naming(series.mode, s).0, s.help, s.kind, rows)
            })
            .collect();
        let xids = lock(&series.last_xid).clone();
        let rows = xids
            .iter()
            .filter_map(|(gpu, xid)| Some((labels(samples.get(gpu)?), *xid as f64)));
        families.push(family(
            &naming(series.mode, &XID).0,
            XID.help,
            XID.kind,
            rows,
        ));
        families
    }
}

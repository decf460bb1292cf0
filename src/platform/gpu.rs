//! GPU detection through NVML (nvml-wrapper): model, memory, driver, utilisation, temperature of
//! every NVIDIA GPU. NVML is loaded once per process and kept; a machine without the NVIDIA
//! driver gets a report that says so (`driver: null`, `error: "no NVIDIA driver ..."`) in well
//! under a millisecond, never a panic. This module only reads; it never changes a GPU setting.

use std::sync::OnceLock;

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::Serialize;

/// One GPU as NVML reports it. Fields NVML cannot read on a device are `null`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    /// Percent of time a kernel ran over the last sample period.
    pub utilization_percent: Option<u32>,
    pub memory_utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_watts: Option<f64>,
}

impl Gpu {
    /// Total memory in whole GiB (rounded to nearest), for the `vram:<N>gb` tag.
    pub fn vram_gb(&self) -> Option<u64> {
        self.memory_total_bytes
            .map(|b| (b + (1 << 29)) / (1 << 30))
            .filter(|gb| *gb > 0)
    }
}

/// What GPU detection found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuReport {
    /// The NVIDIA driver version, when a driver answered.
    pub driver: Option<String>,
    /// The CUDA version the driver supports, e.g. `12.4`.
    pub cuda: Option<String>,
    pub gpus: Vec<Gpu>,
    /// Why no GPU could be read (`no NVIDIA driver ...`), when that is the case.
    pub error: Option<String>,
}

impl GpuReport {
    fn unavailable(error: String) -> Self {
        Self {
            driver: None,
            cuda: None,
            gpus: Vec::new(),
            error: Some(error),
        }
    }
}

/// NVML, initialised on first use and kept for the life of the process.
fn nvml() -> Result<&'static Nvml, &'static str> {
    static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();
    NVML.get_or_init(|| Nvml::init().map_err(describe_init_error))
        .as_ref()
        .map_err(String::as_str)
}

/// Says in words why NVML did not start; a missing library or driver reads "no NVIDIA driver".
fn describe_init_error(e: NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => {
            "no NVIDIA driver (libnvidia-ml.so.1 not found)".into()
        }
        NvmlError::DriverNotLoaded => "no NVIDIA driver (the kernel driver is not loaded)".into(),
        NvmlError::NoPermission => "NVIDIA driver present but NVML access is denied".into(),
        other => format!("NVML failed to start: {other}"),
    }
}

/// Reads every GPU now (utilisation and temperature are current values).
pub fn detect() -> GpuReport {
    let nvml = match nvml() {
        Ok(n) => n,
        Err(e) => return GpuReport::unavailable(e.to_string()),
    };
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => return GpuReport::unavailable(format!("NVML could not count GPUs: {e}")),
    };
    let mut gpus = Vec::with_capacity(count as usize);
    let mut error = None;
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                error = Some(format!("GPU {index}: {e}"));
                continue;
            }
        };
        let memory = device.memory_info().ok();
        let util = device.utilization_rates().ok();
        gpus.push(Gpu {
            index,
            name: device
                .name()
                .unwrap_or_else(|_| "unknown NVIDIA GPU".into()),
            uuid: device.uuid().ok(),
            memory_total_bytes: memory.as_ref().map(|m| m.total),
            memory_used_bytes: memory.as_ref().map(|m| m.used),
            utilization_percent: util.as_ref().map(|u| u.gpu),
            memory_utilization_percent: util.as_ref().map(|u| u.memory),
            temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
            power_watts: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
        });
    }
    GpuReport {
        driver: nvml.sys_driver_version().ok(),
        cuda: nvml
            .sys_cuda_driver_version()
            .ok()
            .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)),
        gpus,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_never_panics_and_explains_a_missing_driver() {
        let started = std::time::Instant::now();
        let report = detect();
        if report.driver.is_none() {
            assert!(report.gpus.is_empty());
            let error = report.error.expect("a reason when no driver answered");
            assert!(!error.is_empty());
        }
        // The second call reuses the loaded (or failed) NVML.
        let again = detect();
        assert_eq!(again.driver, report.driver);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn vram_rounds_to_whole_gib() {
        let mut g = Gpu {
            index: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: None,
            memory_total_bytes: Some(85_520_809_984),
            memory_used_bytes: None,
            utilization_percent: None,
            memory_utilization_percent: None,
            temperature_c: None,
            power_watts: None,
        };
        assert_eq!(g.vram_gb(), Some(80));
        g.memory_total_bytes = Some(25_757_220_864); // an RTX 4090 (24 GiB)
        assert_eq!(g.vram_gb(), Some(24));
        g.memory_total_bytes = None;
        assert_eq!(g.vram_gb(), None);
    }
}

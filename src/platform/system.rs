//! System metrics from /proc and statvfs, without a metrics crate: CPU count and model, load
//! averages, memory, uptime, and the free space of a file system. The parsers are pure functions
//! of the file text (tested on fixed inputs); the readers only open the files. Nothing here
//! writes, and a file that cannot be read leaves its fields `null` instead of failing.

use std::path::Path;

use serde::Serialize;

/// A snapshot of the machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemInfo {
    pub hostname: String,
    pub cpu_count: usize,
    pub cpu_model: Option<String>,
    /// 1, 5 and 15 minute load averages.
    pub load: Option<[f64; 3]>,
    pub memory_total_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    pub uptime_s: Option<u64>,
    /// The file system holding the data directory.
    pub disk: Option<Disk>,
}

/// Space on one file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Disk {
    pub total_bytes: u64,
    /// What an unprivileged writer can still use.
    pub available_bytes: u64,
}

/// Reads the machine now; `data_dir` (or its nearest existing parent) picks the file system.
pub fn snapshot(data_dir: &Path) -> SystemInfo {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let cpuinfo = read("/proc/cpuinfo");
    SystemInfo {
        hostname: crate::node::host_name(),
        cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpuinfo.as_deref().and_then(parse_cpu_model),
        load: read("/proc/loadavg").as_deref().and_then(parse_loadavg),
        memory_total_bytes: read("/proc/meminfo")
            .as_deref()
            .and_then(|m| meminfo_bytes(m, "MemTotal")),
        memory_available_bytes: read("/proc/meminfo")
            .as_deref()
            .and_then(|m| meminfo_bytes(m, "MemAvailable")),
        uptime_s: read("/proc/uptime").as_deref().and_then(parse_uptime),
        disk: disk_space(data_dir).ok(),
    }
}

/// Free and total space of the file system holding `path` (or its nearest existing parent).
pub fn disk_space(path: &Path) -> std::io::Result<Disk> {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => {
                p = Path::new(".");
                break;
            }
        }
    }
    let s = rustix::fs::statvfs(p).map_err(std::io::Error::from)?;
    Ok(Disk {
        total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
        available_bytes: s.f_bavail.saturating_mul(s.f_frsize),
    })
}

/// `0.52 0.58 0.59 2/1123 4567` → `[0.52, 0.58, 0.59]`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// A `/proc/meminfo` line such as `MemTotal:  16314328 kB`, in bytes.
pub fn meminfo_bytes(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, rest) = line.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        let mut parts = rest.split_whitespace();
        let n: u64 = parts.next()?.parse().ok()?;
        Some(match parts.next() {
            Some("kB") => n * 1024,
            _ => n,
        })
    })
}

/// The first `model name` of `/proc/cpuinfo` (x86), else `Model` (ARM boards).
pub fn parse_cpu_model(text: &str) -> Option<String> {
    ["model name", "Model", "Processor"].iter().find_map(|key| {
        text.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
        })
    })
}

/// `/proc/uptime` (`12345.67 23456.78`) in whole seconds.
pub fn parse_uptime(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 2/1123 4567\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(parse_loadavg("garbage"), None);
        let meminfo = "MemTotal:       16314328 kB\nMemFree:  100 kB\nMemAvailable:   8000000 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), Some(16_314_328 * 1024));
        assert_eq!(
            meminfo_bytes(meminfo, "MemAvailable"),
            Some(8_000_000 * 1024)
        );
        assert_eq!(meminfo_bytes(meminfo, "SwapTotal"), None);
        let cpu = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU\n";
        assert_eq!(
            parse_cpu_model(cpu).as_deref(),
            Some("Intel(R) Xeon(R) CPU")
        );
        assert_eq!(
            parse_cpu_model("Model\t: Raspberry Pi 5\n").as_deref(),
            Some("Raspberry Pi 5")
        );
        assert_eq!(parse_uptime("12345.67 23456.78\n"), Some(12345));
        assert_eq!(parse_uptime(""), None);
    }

    #[test]
    fn this_machine_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = snapshot(&dir.path().join("not/yet/created"));
        assert!(s.cpu_count >= 1);
        let disk = s.disk.expect("statvfs of an existing parent");
        assert!(disk.total_bytes >= disk.available_bytes);
        if cfg!(target_os = "linux") {
            assert!(s.memory_total_bytes.unwrap() > 0);
            assert!(s.load.is_some());
        }
    }
}

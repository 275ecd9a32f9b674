//! CPU and memory of processes read from `/proc`: the truc child, the
//! RabbitMQ node (when it runs on this machine and is readable), and the
//! benchmark itself; plus the broker's open-files limit, which caps how many
//! AMQP connections it can hold.

use std::sync::OnceLock;
use std::time::Instant;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Snap {
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Peak resident set size, KiB.
    pub hwm_kib: u64,
    /// Threads.
    pub threads: u64,
    /// When it was read.
    pub at: Instant,
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` when the process is gone.
pub fn read(pid: u32) -> Option<Snap> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Snap {
        cpu_ticks: utime + stime,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        threads: kib("Threads:"),
        at: Instant::now(),
    })
}

/// CPU used between two readings, in percent of one core.
pub fn cpu_pct(a: &Snap, b: &Snap) -> f64 {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let used = b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / clk_tck();
    used / secs * 100.0
}

/// CPU seconds used between two readings.
pub fn cpu_secs(a: &Snap, b: &Snap) -> f64 {
    b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / clk_tck()
}

/// The RabbitMQ node's process on this machine (`beam.smp … -s rabbit boot`), if visible.
pub fn find_broker_pid() -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("beam.smp") && cmd.contains("rabbit boot") {
            return Some(pid);
        }
    }
    None
}

/// What limits the broker's connections, as far as `/proc` tells.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerLimits {
    /// The node's process id.
    pub pid: u32,
    /// Soft open-files limit of the node.
    pub open_files_limit: Option<u64>,
    /// RabbitMQ's socket limit derived from it: `(limit - 100) * 0.9`, as the
    /// node computes it at start-up.
    pub socket_limit_estimate: Option<u64>,
    /// Sockets the node holds now.
    pub sockets_in_use: Option<u64>,
}

/// Reads the broker's limits; `None` when no local node is visible.
pub fn broker_limits(pid: Option<u32>) -> Option<BrokerLimits> {
    let pid = pid?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok();
    let open_files_limit = limits.as_deref().and_then(|text| {
        text.lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok())
    });
    let socket_limit_estimate =
        open_files_limit.map(|n| (n.saturating_sub(100) as f64 * 0.9).ceil() as u64);
    let sockets_in_use = std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| {
        d.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|t| t.to_string_lossy().starts_with("socket:"))
                    .unwrap_or(false)
            })
            .count() as u64
    });
    Some(BrokerLimits {
        pid,
        open_files_limit,
        socket_limit_estimate,
        sockets_in_use,
    })
}

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

/// CPU seconds of `ticks` clock ticks.
pub fn cpu_secs_of_ticks(ticks: u64) -> f64 {
    ticks as f64 / clk_tck()
}

/// CPU seconds used between two readings.
pub fn cpu_secs(a: &Snap, b: &Snap) -> f64 {
    b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / clk_tck()
}

/// Host and port of an AMQP URL (`amqp://user:pass@host:port/vhost`);
/// the port defaults to 5672 (5671 for `amqps`).
pub fn amqp_host_port(url: &str) -> (String, u16) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default = if scheme.eq_ignore_ascii_case("amqps") {
        5671
    } else {
        5672
    };
    // `[::1]:5672`, `host:5672`, `host`.
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').unwrap_or((v6, ""));
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = port.and_then(|p| p.parse().ok()).unwrap_or(default);
    let host = if host.is_empty() { "localhost" } else { host };
    (host.to_owned(), port)
}

/// Inodes of the sockets listening on TCP `port` (IPv4 and IPv6), from
/// `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && *state == "0A" {
                if let Ok(i) = inode.parse::<u64>() {
                    if i != 0 {
                        out.push(i);
                    }
                }
            }
        }
    }
    out
}

/// Processes holding one of the sockets `inodes` (their `/proc/<pid>/fd`
/// links read `socket:[<inode>]`).
pub fn socket_owners(inodes: &[u64]) -> Vec<u32> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .map(|t| wanted.iter().any(|w| t.as_os_str() == w.as_str()))
                .unwrap_or(false)
        });
        if holds {
            out.push(pid);
        }
    }
    out
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The broker process the benchmark talks to: the owner of the socket
/// listening on the port of `amqp_url` (the `beam.smp` one when several
/// processes hold it). When that cannot be found (remote broker, `/proc` not
/// readable) it falls back to the first RabbitMQ node in `/proc`, with a
/// warning on stderr, since that may be another node than the one in use;
/// `None` when there is none.
pub fn find_broker_pid(amqp_url: &str) -> Option<u32> {
    let (host, port) = amqp_host_port(amqp_url);
    let local = matches!(host.as_str(), "localhost" | "::1") || host.starts_with("127.");
    if !local {
        eprintln!(
            "warning: the broker is at {host}:{port}; its CPU is read only if it listens on port {port} of this machine"
        );
    }
    let owners = socket_owners(&listening_inodes(port));
    let pick = owners
        .iter()
        .copied()
        .find(|p| comm(*p) == "beam.smp")
        .or_else(|| owners.first().copied());
    if let Some(pid) = pick {
        return Some(pid);
    }
    let fallback = first_rabbit_node();
    match fallback {
        Some(pid) => eprintln!(
            "warning: no process found listening on TCP port {port}; broker CPU is read from the first RabbitMQ node in /proc (pid {pid}), which may not be the broker at {host}:{port}"
        ),
        None => eprintln!(
            "warning: no local broker process found for {host}:{port}: broker CPU is not reported"
        ),
    }
    fallback
}

/// The first RabbitMQ node in `/proc` (`beam.smp … rabbit boot`).
fn first_rabbit_node() -> Option<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_amqp_urls() {
        let hp = |u: &str| amqp_host_port(u);
        assert_eq!(
            hp("amqp://guest:guest@127.0.0.1:5672/%2f"),
            ("127.0.0.1".into(), 5672)
        );
        assert_eq!(hp("amqp://u:p@localhost:5673"), ("localhost".into(), 5673));
        assert_eq!(hp("amqp://rabbit.local/vh"), ("rabbit.local".into(), 5672));
        assert_eq!(hp("amqps://u:p@h/vh"), ("h".into(), 5671));
        assert_eq!(hp("amqp://u:p@[::1]:5674/%2f"), ("::1".into(), 5674));
        assert_eq!(hp("amqp://u:p%40x@h:1234/"), ("h".into(), 1234));
    }

    #[test]
    fn a_listening_socket_is_found_with_its_owner() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let inodes = listening_inodes(port);
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        assert_eq!(socket_owners(&inodes), vec![std::process::id()]);
        drop(l);
        assert!(listening_inodes(port).is_empty());
    }
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

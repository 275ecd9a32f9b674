//! The admin surface under hostile or careless input: tokens, a non-loopback
//! address without HTTPS, the `/metrics` token switch, private data files,
//! idle connections. Each test runs its own `truc serve` (pointed at a broker
//! port where nothing listens, so it declares nothing anywhere), killed and
//! its temp dir removed on `Drop`.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use truc::cli::http::{request, request_tls};
use truc::cli::tls::AdminClientTls;

/// A broker URL where nothing listens: the hub keeps retrying and never
/// declares a queue.
const NO_BROKER: &str = "amqp://guest:guest@127.0.0.1:1/%2f";
const TOKEN: &str = "admin-surface-token-0123456789";

/// Every hub here asks for port 0 (the system picks a free one, which no
/// other test can hold); [`Hub::serve`] learns it from `admin.addr`
/// ([`common::bound_admin_addr`]).
const ANY_PORT: &str = "127.0.0.1:0";

/// The port of `addr` (`host:port`).
fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or("", |(_, p)| p)
}

/// A temp dir with a config file, and the `truc serve` started from it.
struct Hub {
    dir: tempfile::TempDir,
    addr: String,
    child: Option<Child>,
}

impl Hub {
    fn new(admin_addr: &str, config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("truc.toml"),
            format!(
                "queues_dir = {:?}\npolicies_dir = {:?}\n{config}\n",
                concat!(env!("CARGO_MANIFEST_DIR"), "/queues"),
                dir.path().join("no-policies").display().to_string(),
            ),
        )
        .unwrap();
        Self {
            dir,
            addr: admin_addr.to_owned(),
            child: None,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_truc"));
        c.args(args)
            .arg("--config")
            .arg(self.dir.path().join("truc.toml"))
            .env_remove("TRUC_CONFIG")
            .env_remove("TRUC_ADMIN_TOKEN")
            .env_remove("TRUC_ADMIN_CA_FILE")
            .env_remove("TRUC_ADMIN_TLS_CERT")
            .env_remove("TRUC_ADMIN_TLS_KEY")
            .env_remove("TRUC_METRICS_REQUIRE_TOKEN")
            .env("TRUC_AMQP_URL", NO_BROKER)
            .env("TRUC_DATA_DIR", self.data())
            .env("TRUC_ADMIN_ADDR", &self.addr)
            .env("TRUC_PREFIX", "surface.")
            .env("RUST_LOG", "info");
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// Runs `truc serve` and expects it to stop by itself (refusing to start).
    fn serve_refused(&self, env: &[(&str, &str)]) -> String {
        let out = run_to_exit(self.command(&["serve"], env));
        assert!(!out.status.success(), "serve started: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts `truc serve` and waits until `/healthz` answers (over `tls`).
    async fn serve(&mut self, env: &[(&str, &str)], tls: Option<&AdminClientTls>) {
        let log = std::fs::File::create(self.dir.path().join("serve.log")).unwrap();
        // Not one a refused start left behind.
        let _ = std::fs::remove_file(self.data().join("admin.addr"));
        let mut child = self
            .command(&["serve"], env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // The port it got; the host as asked (0.0.0.0 is reached on loopback).
        let bound = common::bound_admin_addr(&mut child, &self.data(), || self.log());
        let host = self.addr.rsplit_once(':').map_or("", |(h, _)| h);
        self.addr = format!("{host}:{}", port_of(&bound));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = request_tls(tls, &self.addr, "GET", "/healthz", "", None).await {
                // Answering: 503 here, as the broker is unreachable on purpose.
                if r.status == 200 || r.status == 503 {
                    return;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("serve exited ({st}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "serve did not answer: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Runs a CLI command to its end.
    fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        run_to_exit(self.command(args, env))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` and waits at most 20 s for it to exit (killed and failed otherwise).
fn run_to_exit(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still running after 20 s: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every (path, mode) under `root` whose mode is not 0700 (dirs) / 0600 (files).
fn loose_modes(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let want = if root.is_dir() { 0o700 } else { 0o600 };
    if mode(root) != want {
        out.push((root.to_owned(), mode(root)));
    }
    if root.is_dir() {
        for e in std::fs::read_dir(root).unwrap() {
            out.extend(loose_modes(&e.unwrap().path()));
        }
    }
    out
}

#[tokio::test]
async fn empty_blank_or_short_tokens_stop_serve_and_the_cli() {
    let hub = Hub::new(ANY_PORT, "");
    for bad in ["", "    ", "short-token"] {
        let err = hub.serve_refused(&[("TRUC_ADMIN_TOKEN", bad)]);
        assert!(err.contains("admin_token"), "{bad:?}: {err}");
        let out = hub.cli(&["agency", "list"], &[("TRUC_ADMIN_TOKEN", bad)]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("admin_token"), "{bad:?}: {err}");
    }
    // A token file left empty (a write that failed on a full disk) or short.
    std::fs::create_dir_all(hub.data()).unwrap();
    for (text, why) in [("", "empty"), ("\n  \n", "empty"), ("abc\n", "shorter")] {
        std::fs::write(hub.data().join("admin.token"), text).unwrap();
        let err = hub.serve_refused(&[]);
        assert!(
            err.contains("admin.token") && err.contains(why),
            "{text:?}: {err}"
        );
        let out = hub.cli(&["agency", "list"], &[]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("admin.token") && err.contains(why),
            "{text:?}: {err}"
        );
    }
}

#[tokio::test]
async fn a_non_loopback_admin_api_is_https_only() {
    let mut hub = Hub::new("0.0.0.0:0", "admin_header_timeout = \"1s\"");
    let err = hub.serve_refused(&[("TRUC_ADMIN_TOKEN", TOKEN)]);
    assert!(err.contains("not loopback"), "{err}");

    // Certificates from the ops script: the admin API's and another CA.
    let certs = hub.dir.path().join("certs");
    let other = hub.dir.path().join("other");
    for dir in [&certs, &other] {
        common::server_certs(dir);
    }
    let cert = certs.join("server.pem").display().to_string();
    let key = certs.join("server.key").display().to_string();
    let ca = certs.join("ca.pem");
    let tls = AdminClientTls::from_ca_file(&ca).unwrap();
    hub.serve(
        &[
            ("TRUC_ADMIN_TOKEN", TOKEN),
            ("TRUC_ADMIN_TLS_CERT", &cert),
            ("TRUC_ADMIN_TLS_KEY", &key),
        ],
        Some(&tls),
    )
    .await;
    let local = format!("127.0.0.1:{}", port_of(&hub.addr));

    // HTTPS with the token works; /metrics needs the token off loopback.
    let r = request_tls(Some(&tls), &local, "GET", "/v1/agencies", TOKEN, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = request_tls(Some(&tls), &local, "GET", "/metrics", "", None)
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = request_tls(Some(&tls), &local, "GET", "/metrics", TOKEN, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // Plain HTTP to it gets no answer; another CA fails the handshake.
    assert!(request(&local, "GET", "/healthz", TOKEN, None)
        .await
        .is_err());
    let wrong = AdminClientTls::from_ca_file(&other.join("ca.pem")).unwrap();
    let e = request_tls(Some(&wrong), &local, "GET", "/healthz", TOKEN, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");

    // The CLI: refused without a CA file (no plaintext token), fine with it.
    let ca_text = ca.display().to_string();
    let out = hub.cli(&["agency", "list"], &[("TRUC_ADMIN_TOKEN", TOKEN)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TRUC_ADMIN_CA_FILE"),
        "{out:?}"
    );
    let out = hub.cli(
        &["agency", "list", "--json"],
        &[
            ("TRUC_ADMIN_TOKEN", TOKEN),
            ("TRUC_ADMIN_CA_FILE", &ca_text),
        ],
    );
    assert!(out.status.success(), "{out:?}");

    // A connection that never starts its TLS handshake is closed.
    let started = Instant::now();
    let mut idle = std::net::TcpStream::connect(&local).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(idle.read(&mut buf).unwrap(), 0, "closed by the server");
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn metrics_token_switch() {
    // Loopback default: open.
    let mut open = Hub::new(ANY_PORT, "");
    open.serve(&[("TRUC_ADMIN_TOKEN", TOKEN)], None).await;
    let r = request(&open.addr, "GET", "/metrics", "", None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = request(&open.addr, "GET", "/v1/agencies", "", None)
        .await
        .unwrap();
    assert_eq!(r.status, 401, "the API itself always needs the token");

    let mut closed = Hub::new(ANY_PORT, "metrics_require_token = true");
    closed.serve(&[("TRUC_ADMIN_TOKEN", TOKEN)], None).await;
    let r = request(&closed.addr, "GET", "/metrics", "", None)
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = request(
        &closed.addr,
        "GET",
        "/metrics",
        "wrong-token-0123456789",
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let r = request(&closed.addr, "GET", "/metrics", TOKEN, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("truc_"));
}

#[cfg(unix)]
#[tokio::test]
async fn data_dir_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut hub = Hub::new(ANY_PORT, "");
    // A data dir that exists with loose modes is tightened too.
    std::fs::create_dir_all(hub.data()).unwrap();
    std::fs::set_permissions(hub.data(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // No TRUC_ADMIN_TOKEN: the token and the master key are generated.
    hub.serve(&[], None).await;
    let token = std::fs::read_to_string(hub.data().join("admin.token")).unwrap();
    assert_eq!(token.trim().len(), 48);
    assert!(hub.data().join("master.key").exists());
    let r = request(&hub.addr, "GET", "/v1/agencies", token.trim(), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let files = std::fs::read_dir(hub.data()).unwrap().count();
    assert!(files >= 3, "sled files, admin.token, master.key");
    assert_eq!(loose_modes(&hub.data()), Vec::new());
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed() {
    let mut hub = Hub::new(ANY_PORT, "admin_header_timeout = \"1s\"");
    hub.serve(&[("TRUC_ADMIN_TOKEN", TOKEN)], None).await;
    let started = Instant::now();
    let mut conns = Vec::new();
    // Silent connections, and one that sends half a request head.
    for _ in 0..200 {
        conns.push(std::net::TcpStream::connect(&hub.addr).unwrap());
    }
    let mut slow = std::net::TcpStream::connect(&hub.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    conns.push(slow);
    // A keep-alive connection after one full request.
    let mut kept = std::net::TcpStream::connect(&hub.addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = kept.read(&mut buf).unwrap();
    // 503: unhealthy, the broker is unreachable on purpose; but answered.
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503"));
    conns.push(kept);
    for mut c in conns {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The server closes (EOF, or a reset after an error response).
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("connection still open after 5 s")
                }
                Err(_) => break,
            }
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    // Still serving (unhealthy: no broker on purpose).
    let r = request(&hub.addr, "GET", "/healthz", "", None)
        .await
        .unwrap();
    assert_eq!(r.status, 503);
}

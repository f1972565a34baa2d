//! A NATS server for one test (Debian's `nats-server`, installed by scripts/setup.sh): on a
//! free loopback port, stopped when dropped. It starts in tens of milliseconds, so each test has
//! its own and no test sees another's subjects.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nats {
    child: Child,
    pub url: String,
    /// The monitoring endpoint (`/varz` counts the bytes in and out).
    pub monitor: String,
}

fn binary() -> PathBuf {
    if let Some(b) = std::env::var_os("NATS_SERVER") {
        return b.into();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "nats-server is not installed: the multi-machine tests start one of their own. \
                 Install Debian's nats-server (bash scripts/setup.sh does), or set NATS_SERVER \
                 to its path."
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a NATS server and waits until it accepts connections.
pub fn start() -> Nats {
    let (port, monitor) = (free_port(), free_port());
    let child = Command::new(binary())
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            &monitor.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    // Stopped with this test process however it ends (`Drop` does not run on a kill).
    let _watcher = Command::new("sh")
        .args([
            "-c",
            &format!(
                // Only if that pid is still the NATS server (Drop may have reaped it already).
                "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
                 grep -q nats-server /proc/{nats}/cmdline 2>/dev/null && kill {nats}",
                me = std::process::id(),
                nats = child.id()
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen on {port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Nats {
        child,
        url: format!("nats://127.0.0.1:{port}"),
        monitor: format!("http://127.0.0.1:{monitor}"),
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

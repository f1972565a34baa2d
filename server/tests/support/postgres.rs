//! A throw-away PostgreSQL cluster for the tests, as an operator's would be but disposable:
//! `initdb` into a fresh directory, the server on a free loopback port, trust authentication,
//! no fsync. One cluster per test binary while any test holds it (the last holder stops it); each
//! test gets a database of its own, so tests never see each other's runs.
//!
//! Needs Debian's `postgresql` (scripts/setup.sh installs it). As root, the cluster runs as the
//! `postgres` user: PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    next_db: AtomicU32,
}

/// The running cluster, started on first use.
pub fn cluster() -> Arc<Cluster> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = shared.upgrade() {
        return c;
    }
    let c = Arc::new(Cluster::start());
    *shared = Arc::downgrade(&c);
    c
}

impl Cluster {
    fn start() -> Self {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "fl-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        // initdb creates the directory as the user it runs as.
        run_as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                &dir.join("data").display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            Some(&dir),
        );
        // A port that was free a moment ago; a clash fails pg_ctl and is retried.
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let options = format!(
                "-k {} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
                dir.display()
            );
            let started = try_run_as_postgres(
                &bin.join("pg_ctl"),
                &[
                    "-D",
                    &dir.join("data").display().to_string(),
                    "-l",
                    &dir.join("log").display().to_string(),
                    "-w",
                    "-o",
                    &options,
                    "start",
                ],
            );
            if started {
                watch_for_the_end_of(&bin, &dir);
                return Self {
                    dir,
                    bin,
                    port,
                    next_db: AtomicU32::new(0),
                };
            }
        }
        panic!(
            "PostgreSQL did not start: see {}",
            dir.join("log").display()
        );
    }

    /// A new, empty database in the cluster: its URL.
    pub fn database(&self, name: &str) -> String {
        let db = format!("{name}_{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                &db,
            ])
            .output()
            .expect("createdb runs");
        assert!(
            out.status.success(),
            "createdb {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _best_effort = try_run_as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.dir.join("data").display().to_string(),
                "-m",
                "immediate",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops the cluster when this test process ends however it ends: `Drop` does not run for a
/// process killed by a timeout or a signal, and the cluster would outlive it.
fn watch_for_the_end_of(bin: &Path, dir: &Path) {
    let as_postgres = if is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         {as_postgres}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
        data = dir.join("data").display(),
        dir = dir.display(),
    );
    let _watcher = Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Where PostgreSQL's server programs are: `$PG_BIN`, Debian's newest
/// `/usr/lib/postgresql/<version>/bin`, or the directory of `initdb` on the `PATH`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return dir.into();
    }
    let newest_debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .max();
    if let Some((_, bin)) = newest_debian {
        return bin;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("initdb").exists())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL's initdb is not installed: the PostgreSQL tests start a cluster of \
                 their own. Install Debian's postgresql (bash scripts/setup.sh does), or set \
                 PG_BIN to the directory of initdb and pg_ctl."
            )
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn command_as_postgres(program: &Path, args: &[&str]) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    c.args(args).current_dir("/");
    c
}

fn try_run_as_postgres(program: &Path, args: &[&str]) -> bool {
    command_as_postgres(program, args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_as_postgres(program: &Path, args: &[&str], dir: Option<&Path>) {
    let out = command_as_postgres(program, args)
        .output()
        .unwrap_or_else(|e| panic!("{} does not run: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} failed{}: {}",
        program.display(),
        dir.map(|d| format!(" for {}", d.display()))
            .unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
}

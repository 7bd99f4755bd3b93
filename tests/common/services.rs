//! Real Redis and PostgreSQL servers for the integration tests, started on free
//! loopback ports in temporary directories and stopped by PID (never by name).
//!
//! `make test` installs the Debian packages when they are missing. A missing
//! binary is a test failure with a message, never a silent skip.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_port(port: u16, up: bool, what: &str) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() != up {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what} on port {port} did not come {}",
            if up { "up" } else { "down" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn need(binary: &Path, package: &str) {
    assert!(
        binary.exists(),
        "{} not found: install the Debian package `{package}` (make test does this)",
        binary.display()
    );
}

fn which(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(format!("/usr/bin/{name}"))
}

pub(crate) struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Redis {
            port: free_port(),
            dir,
            child: None,
        };
        r.restart();
        r
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (again) on the same port.
    pub(crate) fn restart(&mut self) {
        let bin = which("redis-server");
        need(&bin, "redis-server");
        let child = Command::new(bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        wait_port(self.port, true, "redis");
    }

    /// Kills the server we started (SIGKILL: a crash, not a clean shutdown).
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false, "redis");
    }

    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(which("redis-cli"))
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/postgresql/NN/bin/{name}")))
}

/// A PostgreSQL cluster of our own. PostgreSQL refuses to run as root, so when
/// we are root the cluster belongs to the `postgres` user and commands run
/// through `runuser`.
pub(crate) struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
}

fn as_postgres(bin: &Path) -> Command {
    let root = unsafe_is_root();
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

impl Postgres {
    pub(crate) fn start() -> Postgres {
        let initdb = pg_bin("initdb");
        need(&initdb, "postgresql");
        let dir = tempfile::Builder::new()
            .prefix("inferd-pg")
            .tempdir()
            .expect("tempdir");
        if unsafe_is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success());
        }
        let out = as_postgres(&initdb)
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            port: free_port(),
            dir,
            running: false,
        };
        pg.resume();
        pg
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        as_postgres(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args)
            .output()
            .expect("pg_ctl")
    }

    /// Starts the cluster (again) on the same port.
    pub(crate) fn resume(&mut self) {
        let opts = format!(
            // fsync=off is safe here: `stop` kills the server, not the machine, so
            // the OS still writes what PostgreSQL acknowledged. (Asynchronous
            // commit would not be: it acknowledges before writing the WAL.)
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let out = self.ctl(&[
            "-l",
            log.to_str().unwrap_or("log"),
            "-w",
            "-o",
            &opts,
            "start",
        ]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = true;
        wait_port(self.port, true, "postgres");
    }

    /// Stops the cluster at once (connections are cut).
    pub(crate) fn stop(&mut self) {
        if self.running {
            let _ = self.ctl(&["-m", "immediate", "-w", "stop"]);
            self.running = false;
        }
    }

    /// Runs SQL through psql and returns its unaligned output.
    pub(crate) fn psql(&self, sql: &str) -> String {
        let out = Command::new(which("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-At",
                "-c",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

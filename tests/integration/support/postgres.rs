//! A throwaway PostgreSQL cluster for a test: `initdb` into a temporary
//! directory, `pg_ctl start` listening on a Unix socket there only (no TCP
//! port to pick), stopped when dropped. As root (CI) the server runs as the
//! `postgres` user, which Debian's package creates.
//!
//! Without PostgreSQL installed the test fails under `CI=true` (naming the
//! package) and is skipped with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

pub struct PgCluster {
    dir: TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

/// The directory of `initdb` and `pg_ctl`: Debian's
/// `/usr/lib/postgresql/<version>/bin` (the newest), or the PATH.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let found = Command::new("pg_ctl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(PathBuf::new)
}

impl PgCluster {
    /// Starts a cluster, or `None` (skipped, outside CI) when PostgreSQL
    /// is not installed.
    pub fn start() -> Option<PgCluster> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL is not installed: this test needs initdb and pg_ctl \
                 (Debian: apt-get install postgresql; .ci/run installs it)"
            );
            eprintln!("skipped: PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("certmq-pg")
            .tempdir()
            .unwrap();
        let as_postgres = nix::unistd::geteuid().is_root();
        if as_postgres {
            let user = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("running as root, PostgreSQL needs its `postgres` user (the Debian package makes it)");
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        }
        let cluster = PgCluster {
            dir,
            bin,
            as_postgres,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.pg_ctl_start();
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of PostgreSQL's programs (as `postgres` when root);
    /// panics with its output if it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let output = self
            .command(program)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// One of PostgreSQL's programs, run as `postgres` when root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// `pg_ctl stop`'s arguments: at once, as a crash would.
    fn stop_args(&self) -> Vec<String> {
        let data = self.data().display().to_string();
        ["-D", &data, "-m", "immediate", "-w", "stop"]
            .map(String::from)
            .to_vec()
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// (Re)starts the server, waiting until it accepts connections.
    pub fn pg_ctl_start(&self) {
        let options = format!(
            "-c listen_addresses='' -k {} -c max_connections=100",
            self.socket_dir().display()
        );
        let log = self.dir.path().join("server.log");
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once (as a crash would).
    pub fn pg_ctl_stop(&self) {
        let args = self.stop_args();
        self.run(
            "pg_ctl",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }

    /// The connection string of database `name` in this cluster.
    pub fn url(&self, name: &str) -> String {
        format!(
            "host={} user=postgres dbname={name}",
            self.socket_dir().display()
        )
    }

    /// Creates database `name`; its connection string.
    pub async fn database(&self, name: &str) -> String {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .unwrap();
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
        self.url(name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(self.stop_args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

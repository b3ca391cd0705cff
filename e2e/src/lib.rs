//! Runs the real `fjord-broker` binary for process-level tests: start on free
//! loopback ports, stop cleanly, kill -9, SIGSTOP/SIGCONT, restart on the same data.

pub mod prometheus;
pub mod replica_proxy;
pub mod txn_bench;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of the broker binary: `$FJORD_BROKER_BIN`, else built once with cargo.
pub fn broker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("FJORD_BROKER_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "fjord-broker", "--bin", "fjord-broker"])
            .current_dir(&root)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building fjord-broker failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        target.join("debug").join("fjord-broker")
    })
    .clone()
}

/// Reports a test skipped for a missing tool. Written straight to the
/// process's stderr, past the test harness's output capture, so the reason
/// shows in a normal `cargo test` log. Under `CI=true` a skip is a failure:
/// `.ci/run` installs every tool the suite needs, so a missing one is a bug.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    assert!(!in_ci(), "{test} cannot run under CI=true: {reason}");
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {reason}");
}

/// True under `CI=true` (or `CI=1`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A free port on 127.0.0.1 (bound, then released for the broker to take).
///
/// Taken below the kernel's ephemeral range (32768 up): a port the kernel
/// handed out for bind(0) can meanwhile become the source port of some
/// outgoing connection (brokers dial each other), and the broker then fails
/// to bind it. Each process walks its own stretch of 10000..32000, so
/// parallel tests and test binaries do not pick the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() * 1_009) % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 below the ephemeral range")
}

pub struct BrokerProcess {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub kafka: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    extra: Vec<(String, String)>,
    log: PathBuf,
}

impl BrokerProcess {
    /// Starts a broker on `data_dir` with free ports and `extra` config overrides.
    pub fn start(data_dir: &Path, extra: &[(&str, &str)]) -> BrokerProcess {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut b = BrokerProcess {
            child: None,
            data_dir: data_dir.to_path_buf(),
            kafka: addr(free_port()),
            admin: addr(free_port()),
            metrics: addr(free_port()),
            extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log: data_dir.with_extension("broker.log"),
        };
        // A free port can be taken by another test between our check and the
        // broker's bind: then try again with new ones.
        for attempt in 0.. {
            match b.spawn() {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("Address already in use") => {
                    b.kafka = addr(free_port());
                    b.admin = addr(free_port());
                    b.metrics = addr(free_port());
                }
                Err(log) => panic!("broker exited during start; log:\n{log}"),
            }
        }
        b
    }

    /// Starts a broker on the given ports without waiting for it to be ready
    /// (a quorum member is ready only once enough voters run); see [`Self::wait_ready`].
    pub fn launch(data_dir: &Path, ports: [u16; 3], extra: &[(&str, &str)]) -> BrokerProcess {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut b = BrokerProcess {
            child: None,
            data_dir: data_dir.to_path_buf(),
            kafka: addr(ports[0]),
            admin: addr(ports[1]),
            metrics: addr(ports[2]),
            extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log: data_dir.with_extension("broker.log"),
        };
        b.spawn_process();
        b
    }

    /// Whether the process has exited; its status if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.spawn_process();
        self.wait_ready(Duration::from_secs(60))
    }

    fn spawn_process(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log file");
        let mut cmd = Command::new(broker_bin());
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--override")
            .arg(format!("listeners=PLAINTEXT://{}", self.kafka))
            .arg("--override")
            .arg(format!("admin.listener={}", self.admin))
            .arg("--override")
            .arg(format!("metrics.listener={}", self.metrics));
        for (k, v) in &self.extra {
            cmd.arg("--override").arg(format!("{k}={v}"));
        }
        let child = cmd
            // FJORD_E2E_LOG narrows in on a failure (e.g. "info,fjord_broker::txn=debug").
            .env(
                "FJORD_LOG",
                std::env::var("FJORD_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning fjord-broker");
        self.child = Some(child);
    }

    /// Polls the readiness endpoint and the Kafka port until both answer;
    /// Err with the log when the process exited instead.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("exit {status}: {}", self.log_text()));
            }
            if TcpStream::connect_timeout(&self.kafka, Duration::from_millis(200)).is_ok()
                && http_ok(self.metrics, "/readyz")
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "broker not ready in {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn bootstrap(&self) -> String {
        self.kafka.to_string()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9: no shutdown code runs.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10)).expect("broker dies on SIGKILL");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let status = self
            .wait_exit(Duration::from_secs(30))
            .expect("broker stops on SIGTERM");
        assert!(status.success(), "clean shutdown: {status}; log:\n{}", self.log_text());
    }

    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Starts again on the same data directory and ports, without waiting.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        self.spawn_process();
    }

    /// Starts again on the same data directory and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        if let Err(log) = self.spawn() {
            panic!("broker did not restart; log:\n{log}");
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: our own child; SIGCONT first in case a test left it stopped.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            // A failing test shows what its brokers last said (its temporary
            // directory, and the log file with it, goes next).
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("--- last lines of {} ---\n{}", self.log.display(), tail.join("\n"));
        }
    }
}

/// A tiny HTTP/1.0 GET: true on a 200 answer.
pub fn http_ok(addr: SocketAddr, path: &str) -> bool {
    http_get(addr, path).is_some_and(|(code, _)| code == 200)
}

pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let code = body.split_whitespace().nth(1)?.parse().ok()?;
    let text = body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, text))
}

/// Broker CPU time (user + system) in seconds, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

/// A flag that background clients poll to end their loops, raised when this
/// is dropped too: a test that fails midway (unwinding) stops its writers
/// instead of leaving them spinning against brokers that are gone.
#[derive(Clone, Default)]
pub struct StopFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl StopFlag {
    pub fn stop(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A guard for the test body: dropping it (at the end, or unwinding
    /// from a failed assertion) stops every clone.
    pub fn guard(&self) -> StopOnDrop {
        StopOnDrop(self.clone())
    }
}

pub struct StopOnDrop(StopFlag);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Assigns `consumer` every partition of `topic` from its first offset.
pub fn assign_from_beginning(consumer: &rdkafka::consumer::BaseConsumer, topic: &str, partitions: i32) {
    use rdkafka::consumer::Consumer;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .expect("a partition offset");
    }
    consumer.assign(&tpl).expect("assigning partitions");
}

//! A real HAProxy in front of gateway replicas, for the cluster tests: `mode http`, `balance
//! roundrobin`, no stickiness, so each HTTP request of a keep-alive connection is balanced on
//! its own and consecutive requests land on consecutive replicas. Every response (also the
//! 502 HAProxy answers itself when a replica dies under a request) carries
//! `x-served-by: <server name>` (`r0`, `r1`, …), so a client can tell which replica served
//! which request. A TCP health check every 300 ms takes a dead replica out of rotation; a
//! request sent to it before that is redispatched to another one.
//!
//! When a replica dies under a request, HAProxy answers `502` if that request was the first on
//! its client connection; on a kept-alive client connection it closes the connection without
//! an answer instead (HTTP/1.1 lets a client retry a request on a closed kept-alive
//! connection). Either is a retriable error for the call in flight.
//!
//! Installed by `scripts/ensure-haproxy` (Debian package; `scripts/test` runs it); a missing
//! binary fails the test with that hint, never skips it. HAProxy runs in the foreground
//! (`-db`) on a loopback ephemeral port, with its runtime API on a Unix socket in a temporary
//! directory ([`Haproxy::servers`] reads it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::TempDir;

/// A running `haproxy`. Killed on drop.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    addr: SocketAddr,
    socket: PathBuf,
    _dir: TempDir,
}

/// One backend server as the runtime API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// `r0`, `r1`, …
    pub name: String,
    /// `UP`, `DOWN`, … (HAProxy's own words).
    pub status: String,
    /// Requests (streams) on this server right now.
    pub current: u64,
    /// Requests this server got so far.
    pub total: u64,
}

fn binary() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
    {
        let p = PathBuf::from(dir).join("haproxy");
        if p.is_file() {
            return p;
        }
    }
    panic!("haproxy is not installed: run scripts/ensure-haproxy (scripts/test does)")
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

impl Haproxy {
    /// Starts HAProxy balancing over `backends` (named `r0`, `r1`, … in this order) and
    /// waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// If `haproxy` is missing, rejects its configuration or does not start.
    pub fn start(backends: &[SocketAddr]) -> Haproxy {
        let bin = binary();
        let mut last = String::new();
        for _ in 0..5 {
            let dir = TempDir::new();
            let addr = free_port();
            let socket = dir.path().join("admin.sock");
            let servers: String = backends
                .iter()
                .enumerate()
                .map(|(i, b)| format!("    server r{i} {b} check inter 300ms fall 1 rise 1\n"))
                .collect();
            let config = format!(
                "global\n    maxconn 2000\n    stats socket {} mode 600 level admin\n\n\
                 defaults\n    mode http\n    timeout connect 2s\n    timeout client 5m\n    \
                 timeout server 5m\n    timeout http-keep-alive 5m\n    retries 2\n    \
                 option redispatch 1\n\n\
                 frontend mcp\n    bind {addr}\n    default_backend gateways\n\n\
                 backend gateways\n    balance roundrobin\n    \
                 http-after-response set-header x-served-by %s\n{servers}",
                socket.display()
            );
            let cfg = dir.write("haproxy.cfg", &config);
            let check = Command::new(&bin)
                .arg("-c")
                .arg("-f")
                .arg(&cfg)
                .output()
                .unwrap_or_else(|e| panic!("run haproxy -c: {e}"));
            assert!(
                check.status.success(),
                "haproxy rejects its configuration:\n{config}\n{}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
            let mut child = Command::new(&bin)
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn haproxy: {e}"));
            // Its warnings (a server going DOWN or UP) into the test's captured output.
            if let Some(err) = child.stderr.take() {
                std::thread::spawn(move || {
                    use std::io::BufRead as _;
                    for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                        eprintln!("[haproxy] {line}");
                    }
                });
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                    && socket.exists()
                {
                    return Haproxy {
                        child,
                        addr,
                        socket,
                        _dir: dir,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("haproxy exited: {status} (port taken?)");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = "haproxy did not accept connections within 10 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("haproxy did not start: {last}");
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id (for CPU accounting in `loadgen --cluster`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The backend servers, from the runtime API (`show stat`).
    ///
    /// # Panics
    ///
    /// If the runtime API does not answer.
    pub fn servers(&self) -> Vec<ServerState> {
        let mut s = UnixStream::connect(&self.socket).expect("connect to haproxy's runtime API");
        s.write_all(b"show stat\n").expect("write to haproxy");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read from haproxy");
        let mut lines = out.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .unwrap_or_else(|| panic!("no {name} in `show stat`: {out}"))
        };
        let (sv, status, scur, stot) = (col("svname"), col("status"), col("scur"), col("stot"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > stot && f[sv].starts_with('r'))
            .map(|f| ServerState {
                name: f[sv].to_string(),
                status: f[status].to_string(),
                current: f[scur].parse().unwrap_or(0),
                total: f[stot].parse().unwrap_or(0),
            })
            .collect()
    }

    /// One server's state.
    pub fn server(&self, name: &str) -> ServerState {
        self.servers()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    /// Waits until HAProxy's health check says `name` is `status` (`UP` or `DOWN`).
    ///
    /// # Panics
    ///
    /// After `timeout`.
    pub async fn wait_status(&self, name: &str, status: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.server(name);
            if now.status == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy: {name} is {} after {timeout:?}, not {status}",
                now.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

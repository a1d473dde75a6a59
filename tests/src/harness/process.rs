//! Child processes under test: the `portcullis` gateway and `fixture` upstreams.
//!
//! Every child runs in its own process group with `NO_COLOR=1` and stdin closed; its
//! stdout and stderr are piped into reader threads that keep a copy (ANSI escapes
//! stripped, see [`strip_ansi`]) and echo every line, prefixed, to the test's stderr, so
//! libtest shows it for failing tests only. Dropping the handle kills the whole process
//! group with SIGKILL and reaps the child; on Linux the child also gets SIGKILL if the
//! thread that spawned it dies (`PR_SET_PDEATHSIG`), so a killed test binary leaves
//! nothing behind.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

/// How long a child gets to print its `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Gateway::stop`] waits after SIGTERM before giving up.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// The text the fixture's `test_simple_text` tool returns (fixed by the MCP conformance
/// suite, which the fixture also serves).
pub const FIXTURE_SIMPLE_TEXT: &str = "This is a simple text response for testing.";

/// Path of a binary of this workspace (`portcullis`, `fixture`, `portcullis-demo-server`)
/// in the target profile directory the running test executable was built into.
///
/// # Panics
///
/// If the binary does not exist — run `cargo build --workspace` first (building only the
/// tests does not build the gateway).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the current test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has no parent directory")
        .to_path_buf();
    // Test executables live in target/<profile>/deps/, binaries in target/<profile>/.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}; run `cargo build --workspace` (same profile as the \
         tests) before running the end-to-end tests",
        path.display()
    );
    path
}

/// A unique temporary directory, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/portcullis-e2e-<pid>-<n>-<nanos>`.
    pub fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-e2e-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns the file's path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Quotes `s` as a TOML basic string (for paths and URLs spliced into configs).
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `[server]` section every test gateway uses: an ephemeral port on loopback, `/mcp`.
pub fn server_toml() -> String {
    "[server]\nlisten = \"127.0.0.1:0\"\npath = \"/mcp\"\n\n".to_owned()
}

/// An `[upstreams.NAME]` section running the fixture over stdio as `fixture --stdio --name NAME`.
pub fn stdio_fixture_toml(name: &str) -> String {
    format!(
        "[upstreams.{name}]\ncommand = {}\nargs = [\"--stdio\", \"--name\", {}]\n\n",
        toml_str(&bin_path("fixture").to_string_lossy()),
        toml_str(name)
    )
}

type SharedText = Arc<Mutex<String>>;

/// Appends `line` to `buf` without ANSI escape sequences, so tests can match
/// `key=value` in colored tracing output.
fn push_line(buf: &SharedText, line: &str) {
    let mut buf = buf.lock().unwrap_or_else(PoisonError::into_inner);
    buf.push_str(&strip_ansi(line));
    buf.push('\n');
}

/// Removes CSI escape sequences (`ESC [ ... final-byte`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A spawned child with captured output. Shared by [`Gateway`] and [`Fixture`].
#[derive(Debug)]
struct Proc {
    label: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout: SharedText,
    stderr: SharedText,
    stderr_thread: Option<JoinHandle<()>>,
    /// Delivers the text after the `listening on ` prefix, or `None` on stdout EOF.
    listen_rx: Option<tokio::sync::oneshot::Receiver<Option<String>>>,
}

impl Proc {
    /// Spawns `program args` in its own process group and starts the reader threads.
    /// The first stdout line starting with `listen_prefix` is reported through `listen_rx`.
    fn spawn(
        label: String,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        listen_prefix: &'static str,
    ) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("NO_COLOR", "1")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn {}", program.display()))?;
        let label = format!("{label}:{}", child.id());

        let stdout = SharedText::default();
        let stderr = SharedText::default();
        let (listen_tx, listen_rx) = tokio::sync::oneshot::channel();

        let out_pipe = child.stdout.take().expect("stdout is piped");
        let (out_buf, out_label) = (stdout.clone(), label.clone());
        std::thread::Builder::new()
            .name(format!("{out_label} stdout"))
            .spawn(move || {
                let mut listen_tx = Some(listen_tx);
                for line in lines(out_pipe) {
                    eprintln!("[{out_label} stdout] {line}");
                    push_line(&out_buf, &line);
                    if let Some(rest) = line.strip_prefix(listen_prefix)
                        && let Some(tx) = listen_tx.take()
                    {
                        let _ = tx.send(Some(rest.trim().to_owned()));
                    }
                }
                if let Some(tx) = listen_tx.take() {
                    let _ = tx.send(None);
                }
            })
            .context("cannot spawn stdout reader thread")?;

        let err_pipe = child.stderr.take().expect("stderr is piped");
        let (err_buf, err_label) = (stderr.clone(), label.clone());
        let stderr_thread = std::thread::Builder::new()
            .name(format!("{err_label} stderr"))
            .spawn(move || {
                for line in lines(err_pipe) {
                    eprintln!("[{err_label}] {line}");
                    push_line(&err_buf, &line);
                }
            })
            .context("cannot spawn stderr reader thread")?;

        Ok(Proc {
            label,
            child,
            status: None,
            stdout,
            stderr,
            stderr_thread: Some(stderr_thread),
            listen_rx: Some(listen_rx),
        })
    }

    /// Waits for the `listening on` line and returns the URL it announced.
    async fn wait_listening(&mut self) -> anyhow::Result<String> {
        let rx = self.listen_rx.take().expect("wait_listening called twice");
        let outcome = tokio::time::timeout(STARTUP_TIMEOUT, rx).await;
        match outcome {
            Ok(Ok(Some(url))) => Ok(url),
            Ok(Ok(None) | Err(_)) => {
                // stdout closed: the process is exiting. Give it a moment to be reaped.
                let status = self.wait_exit(Duration::from_secs(5)).await;
                self.settle_stderr().await;
                bail!(
                    "{} closed stdout without printing its listening line (exit status {status:?})\n\
                     --- stderr ---\n{}",
                    self.label,
                    self.stderr()
                )
            }
            Err(_) => {
                self.kill();
                self.settle_stderr().await;
                bail!(
                    "{} did not print its listening line within {STARTUP_TIMEOUT:?}\n\
                     --- stdout ---\n{}--- stderr ---\n{}",
                    self.label,
                    self.stdout(),
                    self.stderr()
                )
            }
        }
    }

    /// Waits (bounded) for the stderr reader to reach EOF. It may never do so if a
    /// grandchild inherited the pipe, hence the bound.
    async fn settle_stderr(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Some(t) = &self.stderr_thread {
            if t.is_finished() {
                let _ = self.stderr_thread.take().map(JoinHandle::join);
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn signal(&self, signal: libc::c_int) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: plain syscall; the pid is our unreaped child, so it cannot be recycled.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, signal);
        }
    }

    /// SIGKILLs the whole process group (the child and anything it spawned that stayed
    /// in the group) and reaps the child.
    fn kill(&mut self) {
        // SAFETY: plain syscall on the group we created with process_group(0).
        unsafe {
            libc::kill(-(self.pid() as libc::pid_t), libc::SIGKILL);
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    async fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.stderr();
            if logs.contains(needle) {
                return logs;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: no stderr line containing {needle:?} within {timeout:?}\n--- stderr ---\n{logs}",
                    self.label
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lines of a pipe, lossily decoded, without their terminators.
fn lines(pipe: impl Read) -> impl Iterator<Item = String> {
    let mut reader = BufReader::new(pipe);
    std::iter::from_fn(move || {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                Some(String::from_utf8_lossy(&buf).into_owned())
            }
        }
    })
}

/// Splits `http(s)://ADDR/PATH` into (`http(s)://ADDR`, `ADDR`).
fn split_url(url: &str) -> anyhow::Result<(String, SocketAddr)> {
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(scheme, _)| *scheme == "http" || *scheme == "https")
        .ok_or_else(|| anyhow!("listening URL {url:?} does not start with http(s)://"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr = authority
        .parse()
        .with_context(|| format!("listening URL {url:?} has no socket address"))?;
    Ok((format!("{scheme}://{authority}"), addr))
}

/// A running `portcullis serve` process.
///
/// Killed (with its whole process group) on drop; use [`Gateway::stop`] for a graceful
/// SIGTERM shutdown.
#[derive(Debug)]
pub struct Gateway {
    proc: Proc,
    url: String,
    base: String,
    addr: SocketAddr,
    config_path: PathBuf,
    // Dropped after `proc` (fields drop in declaration order).
    _dir: TempDir,
}

impl Gateway {
    /// Writes `config_toml` to a temporary file, runs `portcullis serve --config FILE` and
    /// waits for its `portcullis listening on URL` line.
    ///
    /// # Panics
    ///
    /// If the gateway does not start; the message includes its stderr.
    pub async fn start(config_toml: &str) -> Gateway {
        Self::try_start_with_env(config_toml, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Gateway::start`] with extra environment variables (e.g. `RUST_LOG`).
    pub async fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Gateway {
        Self::try_start_with_env(config_toml, env)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`Gateway::start_with_env`] but returns start-up failures (including the
    /// gateway's stderr in the error) instead of panicking.
    pub async fn try_start_with_env(
        config_toml: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Gateway> {
        let dir = TempDir::new();
        let config_path = dir.write("portcullis.toml", config_toml);
        let config_arg = config_path.to_string_lossy().into_owned();
        let mut proc = Proc::spawn(
            "portcullis".to_owned(),
            &bin_path("portcullis"),
            &["serve", "--config", &config_arg],
            env,
            "portcullis listening on ",
        )?;
        let url = proc
            .wait_listening()
            .await
            .with_context(|| format!("gateway failed to start with config:\n{config_toml}"))?;
        let (base, addr) = split_url(&url)?;
        Ok(Gateway {
            proc,
            url,
            base,
            addr,
            config_path,
            _dir: dir,
        })
    }

    /// Starts the gateway on [`server_toml`] with the plugins folder `plugins` and these
    /// upstream tables.
    pub async fn start_with_plugins(
        plugins: &super::plugins::PluginDir,
        upstreams_toml: &str,
    ) -> Gateway {
        let config = format!("{}{}{upstreams_toml}", server_toml(), plugins.policy_toml());
        Gateway::start(&config).await
    }

    /// Starts `portcullis serve` without `--config`: the embedded default (the demo
    /// upstream), on an ephemeral port.
    pub async fn start_embedded() -> Gateway {
        let dir = TempDir::new();
        let mut proc = Proc::spawn(
            "portcullis".to_owned(),
            &bin_path("portcullis"),
            &["serve", "--listen", "127.0.0.1:0"],
            &[],
            "portcullis listening on ",
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let url = proc
            .wait_listening()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let (base, addr) = split_url(&url).unwrap_or_else(|e| panic!("{e:#}"));
        Gateway {
            proc,
            url,
            base,
            addr,
            config_path: PathBuf::new(),
            _dir: dir,
        }
    }

    /// Starts `portcullis serve --config FILE` on an existing file (paths in it resolve as
    /// for a user), on an ephemeral port whatever its `server.listen` says.
    pub async fn start_file(config: &Path) -> Gateway {
        let config_arg = config.to_string_lossy().into_owned();
        let mut proc = Proc::spawn(
            "portcullis".to_owned(),
            &bin_path("portcullis"),
            &["serve", "--config", &config_arg, "--listen", "127.0.0.1:0"],
            &[],
            "portcullis listening on ",
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let url = proc
            .wait_listening()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let (base, addr) = split_url(&url).unwrap_or_else(|e| panic!("{e:#}"));
        Gateway {
            proc,
            url,
            base,
            addr,
            config_path: config.to_path_buf(),
            _dir: TempDir::new(),
        }
    }

    /// The full MCP endpoint URL, e.g. `http://127.0.0.1:40123/mcp`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Scheme and authority only, e.g. `http://127.0.0.1:40123`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The config file the gateway was started with (tests may rewrite it).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.proc.stderr()
    }

    /// Everything the gateway wrote to stdout so far (normally only the listening line).
    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    /// Waits until stderr contains `needle` and returns all of stderr.
    ///
    /// # Panics
    ///
    /// After `timeout`, with the logs in the message.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.proc.wait_for_stderr(needle, timeout).await
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the gateway process only.
    pub fn signal(&self, signal: libc::c_int) {
        self.proc.signal(signal);
    }

    /// The exit status if the gateway has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.proc.try_wait()
    }

    /// Waits up to `timeout` for the gateway to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout).await
    }

    /// Graceful stop: SIGTERM, then wait up to [`SHUTDOWN_TIMEOUT`] for the exit status.
    /// Logs stay readable afterwards.
    ///
    /// # Panics
    ///
    /// If the gateway does not exit in time (it is then SIGKILLed).
    pub async fn stop(&mut self) -> ExitStatus {
        self.proc.signal(libc::SIGTERM);
        match self.proc.wait_exit(SHUTDOWN_TIMEOUT).await {
            Some(status) => {
                self.proc.settle_stderr().await;
                status
            }
            None => {
                self.proc.kill();
                panic!(
                    "gateway did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM\n--- stderr ---\n{}",
                    self.logs()
                );
            }
        }
    }
}

/// Output of `portcullis check --config FILE`.
#[derive(Debug)]
pub struct CheckOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `portcullis check --config FILE` on `config_toml`.
pub async fn check_config(config_toml: &str) -> CheckOutput {
    let dir = TempDir::new();
    let path = dir.write("portcullis.toml", config_toml);
    let run = tokio::process::Command::new(bin_path("portcullis"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(STARTUP_TIMEOUT, run)
        .await
        .expect("`portcullis check` did not finish in time")
        .expect("cannot run `portcullis check`");
    CheckOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A fixture MCP server running over HTTP (`fixture --http 127.0.0.1:0 --name NAME`).
/// Killed on drop.
#[derive(Debug)]
pub struct Fixture {
    proc: Proc,
    name: String,
    url: String,
    addr: SocketAddr,
}

impl Fixture {
    /// Starts a fixture and waits for its `listening on URL` line.
    ///
    /// # Panics
    ///
    /// If it does not start.
    pub async fn http(name: &str) -> Fixture {
        Self::http_with_args(name, &[]).await
    }

    /// [`Fixture::http`] with extra command-line arguments.
    pub async fn http_with_args(name: &str, extra_args: &[&str]) -> Fixture {
        Self::spawn_http(name, "127.0.0.1:0", extra_args).await
    }

    /// A fixture on a given address, e.g. the address of one that was killed (an upstream
    /// that restarted and forgot its sessions).
    pub async fn http_on(name: &str, addr: SocketAddr) -> Fixture {
        Self::spawn_http(name, &addr.to_string(), &[]).await
    }

    /// [`Fixture::http_on`] with extra command-line arguments.
    pub async fn http_on_with_args(name: &str, addr: SocketAddr, extra_args: &[&str]) -> Fixture {
        Self::spawn_http(name, &addr.to_string(), extra_args).await
    }

    async fn spawn_http(name: &str, bind: &str, extra_args: &[&str]) -> Fixture {
        let mut args = vec!["--http", bind, "--name", name];
        args.extend_from_slice(extra_args);
        let mut proc = Proc::spawn(
            format!("fixture {name}"),
            &bin_path("fixture"),
            &args,
            &[],
            "listening on ",
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let url = proc
            .wait_listening()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let (_, addr) = split_url(&url).unwrap_or_else(|e| panic!("{e:#}"));
        Fixture {
            proc,
            name: name.to_owned(),
            url,
            addr,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fixture's MCP endpoint, e.g. `http://127.0.0.1:40124/mcp`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Everything the fixture wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.proc.stderr()
    }

    /// An `[upstreams.NAME]` section pointing at this fixture's URL.
    pub fn upstream_toml(&self, upstream: &str) -> String {
        format!("[upstreams.{upstream}]\nurl = {}\n\n", toml_str(&self.url))
    }

    /// Kills the fixture now (SIGKILL), e.g. to simulate an upstream outage.
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

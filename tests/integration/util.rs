//! Shared helpers: real `mxfed` processes on their own loopback addresses,
//! real SQLite files in temp dirs, and a raw quinn client for playing a
//! buggy or hostile peer.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const MXFED: &str = env!("CARGO_BIN_EXE_mxfed");

/// A fresh loopback address for each agent, so tests can run in parallel on
/// the default port. All of 127.0.0.0/8 is routed to `lo` on Linux.
pub fn fresh_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        10 + (pid % 200) as u8,
        (n / 250) as u8,
        (n % 250 + 1) as u8,
    )
}

/// One agent: its temp dir, config and (while running) its process.
pub struct Agent {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Agent {
    /// Runs `mxfed init` for a new agent on a fresh loopback address.
    pub fn init(name: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::new(fresh_ip().into(), 7787);
        let agent = Agent {
            name: name.into(),
            dir,
            addr,
            child: None,
        };
        let out = agent.mxfed(&[
            "init",
            "--name",
            name,
            "--mail-host",
            &format!("mail.{name}.example"),
            "--listen",
            &addr.to_string(),
            "--data-dir",
            agent.data_dir().to_str().unwrap(),
            "--postfix-config-dir",
            agent.dir.path().join("postfix").to_str().unwrap(),
            "--control-socket",
            agent.dir.path().join("control.sock").to_str().unwrap(),
        ]);
        assert_ok(&out, "init");
        agent
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("mxfed.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Runs an `mxfed` command against this agent's config.
    pub fn mxfed(&self, args: &[&str]) -> Output {
        Command::new(MXFED)
            .arg("--config")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts `mxfed agent` and waits until its control socket answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new(MXFED)
            .arg("--config")
            .arg(self.config())
            .arg("agent")
            .env("MXFED_LOG", "info,mxfed_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for(&format!("{} to answer status", self.name), || {
            self.mxfed(&["status", "--json"]).status.success()
        });
    }

    /// Stops the agent with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("agent not running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{} exited with {status} on SIGTERM\n{}",
                    self.name,
                    self.log_text()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    pub fn status(&self) -> Value {
        let out = self.mxfed(&["status", "--json"]);
        assert_ok(&out, "status --json");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn id(&self) -> String {
        self.status()["self"]["id"].as_str().unwrap().to_string()
    }

    pub fn peer(&self, name: &str) -> Option<Value> {
        self.status()["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    }

    pub fn peer_names(&self) -> Vec<String> {
        self.status()["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn connected_to(&self, name: &str) -> bool {
        self.peer(name).is_some_and(|p| p["connected"] == true)
    }

    pub fn invite(&self, ttl: &str) -> String {
        let out = self.mxfed(&["invite", "--ttl", ttl]);
        assert_ok(&out, "invite");
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            stdout.lines().count(),
            1,
            "invite prints exactly one line: {stdout:?}"
        );
        stdout.trim().to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `cond` every 100 ms for up to 30 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts two agents and pairs them: `b` joins `a`'s invite.
pub fn paired_pair(a: &str, b: &str) -> (Agent, Agent) {
    let mut x = Agent::init(a);
    let mut y = Agent::init(b);
    x.start();
    y.start();
    let token = x.invite("10m");
    let out = y.mxfed(&["join", &token]);
    assert_ok(&out, "join");
    wait_for("both sides connected", || {
        x.connected_to(b) && y.connected_to(a)
    });
    (x, y)
}

/// A raw QUIC client speaking as the agent whose data dir is `data_dir`.
pub struct RawPeer {
    /// Held so the client's socket stays open as long as the connection.
    #[allow(dead_code)]
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

impl RawPeer {
    pub async fn connect(
        data_dir: &Path,
        to: SocketAddr,
        expected: mxfed_proto::PeerId,
    ) -> RawPeer {
        let identity = mxfed_agent::identity::Identity::load(data_dir).unwrap();
        let config = mxfed_agent::net::client_config(&identity, expected).unwrap();
        let endpoint = quinn::Endpoint::client(SocketAddr::new(fresh_ip().into(), 0)).unwrap();
        let conn = endpoint
            .connect_with(config, to, mxfed_proto::msg::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        RawPeer { endpoint, conn }
    }

    /// Sends raw bytes on a new stream.
    pub async fn send_raw(&self, bytes: &[u8]) {
        let (mut send, _recv) = self.conn.open_bi().await.unwrap();
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        // Keep the receive half alive until the server has acted.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Waits for the server to close the connection; returns its close code.
    pub async fn close_code(&self) -> u64 {
        let reason = tokio::time::timeout(Duration::from_secs(15), self.conn.closed())
            .await
            .expect("server did not close the connection");
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
            other => panic!("expected an application close, got {other}"),
        }
    }
}

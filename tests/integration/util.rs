//! Shared helpers: real `mxfed` processes on their own loopback addresses,
//! real SQLite files in temp dirs, and a raw quinn client for playing a
//! buggy or hostile peer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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

/// A free UDP port on 127.0.0.1, for an agent that must run where a test
/// Postfix instance listens (instances can only use 127.0.0.1).
pub fn free_udp_on_localhost() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// One agent: its temp dir, config and (while running) its process.
pub struct Agent {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// Extra environment for `mxfed agent` (set before `start`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Agent {
    /// Runs `mxfed init` for a new agent on a fresh loopback address.
    pub fn init(name: &str) -> Agent {
        Agent::init_at(name, SocketAddr::new(fresh_ip().into(), 7787))
    }

    /// Runs `mxfed init` for a new agent listening on `addr`.
    pub fn init_at(name: &str, addr: SocketAddr) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent {
            name: name.into(),
            dir,
            addr,
            env: Vec::new(),
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
        // Many agents share this machine: each its own policy service port.
        let policy = SocketAddr::new(addr.ip(), free_tcp_port());
        agent.configure(&format!("policy_listen = \"{policy}\""));
        agent
    }

    /// Where this agent serves Postfix's policy requests.
    pub fn policy_listen(&self) -> SocketAddr {
        let text = std::fs::read_to_string(self.config()).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("policy_listen"))
            .unwrap();
        line.split('"').nth(1).unwrap().parse().unwrap()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("mxfed.toml")
    }

    /// The address its agent runs on (and its sessions come from).
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Runs one SQL statement on the agent's database, as a disk fault or a
    /// careless admin would change it.
    pub fn sql(&self, statement: &str) {
        self.sql_rows(statement);
    }

    /// Runs one SQL statement on the agent's database and returns the
    /// first column of each row it returns, as text.
    pub fn sql_rows(&self, statement: &str) -> Vec<String> {
        let db = self.data_dir().join("mxfed.db");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                use sqlx::{Connection, Row};
                let url = format!("sqlite://{}", db.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                let rows = sqlx::query(statement).fetch_all(&mut conn).await.unwrap();
                conn.close().await.unwrap();
                rows.iter()
                    .map(|r| r.try_get::<String, _>(0).unwrap_or_default())
                    .collect()
            })
    }

    /// `PRAGMA integrity_check` on the agent's database: "ok" when whole.
    pub fn integrity_check(&self) -> String {
        self.sql_rows("PRAGMA integrity_check").join("; ")
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
        // For profiling a benchmark: MXFED_TEST_WRAP="bravo=heaptrack -o /tmp/h"
        // runs that agent under the command given.
        let wrap = std::env::var("MXFED_TEST_WRAP").ok().and_then(|w| {
            let (name, cmd) = w.split_once('=')?;
            (name == self.name)
                .then(|| cmd.split_whitespace().map(String::from).collect::<Vec<_>>())
        });
        let mut cmd = match &wrap {
            Some(w) => {
                let mut c = Command::new(&w[0]);
                c.args(&w[1..]).arg(MXFED);
                c
            }
            None => Command::new(MXFED),
        };
        let child = cmd
            .arg("--config")
            .arg(self.config())
            .arg("agent")
            .envs(unit_environment())
            .env("MXFED_LOG", "info,mxfed_agent=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
pub fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_for_within(what, Duration::from_secs(30), cond)
}

/// [`wait_for`] with a deadline of its own, for work that scales with a
/// big list: the deadline only stops a test that would hang, it is not a
/// timing (a debug build syncing 100,000 domains beside other test runs
/// took over 30 s once).
pub fn wait_for_within(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts two initialised agents and pairs them: `b` joins `a`'s invite.
pub fn start_and_pair(a: &mut Agent, b: &mut Agent) {
    a.start();
    b.start();
    let token = a.invite("10m");
    assert_ok(&b.mxfed(&["join", &token]), "join");
    let (an, bn) = (a.name.clone(), b.name.clone());
    wait_for("both sides connected", || {
        a.connected_to(&bn) && b.connected_to(&an)
    });
}

/// alpha and bravo, paired, with bravo backing alpha up on `pf` (set up
/// by `mxfed postfix setup`, with `bravo_extra` in its config); the DNS
/// server serves their mail hosts and `records`, and must be kept.
pub fn backup_pair(
    pf: &PostfixInstance,
    bravo_extra: &str,
    records: &[Rec],
) -> (Agent, Agent, DnsServer) {
    let mut alpha = Agent::init("alpha");
    let mut bravo = Agent::init("bravo");
    let mut dns = mail_dns(&[&alpha, &bravo]);
    if !records.is_empty() {
        dns.restart(&["example"], records);
    }
    bravo.use_postfix(pf);
    bravo.configure(bravo_extra);
    assert_ok(&bravo.mxfed(&["postfix", "setup"]), "postfix setup");
    start_and_pair(&mut alpha, &mut bravo);
    (alpha, bravo, dns)
}

/// Starts two agents and pairs them: `b` joins `a`'s invite.
pub fn paired_pair(a: &str, b: &str) -> (Agent, Agent) {
    let mut x = Agent::init(a);
    let mut y = Agent::init(b);
    start_and_pair(&mut x, &mut y);
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

    /// Sends the same raw bytes on `n` streams at once.
    pub async fn send_raw_many(&self, bytes: &[u8], n: usize) {
        let mut kept = Vec::new();
        for _ in 0..n {
            let Ok((mut send, recv)) = self.conn.open_bi().await else {
                break;
            };
            let _ = send.write_all(bytes).await;
            let _ = send.finish();
            kept.push((send, recv));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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

impl Agent {
    /// Sets `key = value` lines in the agent's config file (before `start`),
    /// replacing the lines `init` wrote for those keys.
    pub fn configure(&self, lines: &str) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        let keys: Vec<&str> = lines
            .lines()
            .filter_map(|l| l.split('=').next())
            .map(str::trim)
            .collect();
        let mut out: Vec<&str> = text
            .lines()
            .filter(|l| !keys.contains(&l.split('=').next().unwrap_or("").trim()))
            .collect();
        out.extend(lines.lines());
        std::fs::write(self.config(), out.join("\n") + "\n").unwrap();
    }

    /// Points the agent's MX checks at `dns`.
    pub fn use_dns(&self, dns: &DnsServer) {
        self.configure(&format!("dns_servers = [\"{}\"]", dns.addr));
    }

    /// `mxfed domains ARGS...`, which must succeed.
    pub fn domains(&self, args: &[&str]) -> Output {
        let mut all = vec!["domains"];
        all.extend_from_slice(args);
        let out = self.mxfed(&all);
        assert_ok(&out, &format!("domains {args:?}"));
        out
    }

    /// The entries of `peer`'s list as this agent holds them: domain -> (state, reason).
    pub fn held(&self, peer: &str) -> std::collections::BTreeMap<String, (String, String)> {
        let p = self
            .peer(peer)
            .unwrap_or_else(|| panic!("{} has no peer {peer}", self.name));
        p["domains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["domain"].as_str().unwrap().to_string(),
                    (
                        d["state"].as_str().unwrap().to_string(),
                        d["reason"].as_str().unwrap_or("").to_string(),
                    ),
                )
            })
            .collect()
    }

    /// The state of one domain in `peer`'s list as held here.
    pub fn state_of(&self, peer: &str, domain: &str) -> Option<String> {
        self.held(peer).get(domain).map(|(s, _)| s.clone())
    }
}

/// One DNS record for [`DnsServer`].
#[derive(Debug, Clone)]
pub enum Rec {
    /// `domain MX pref host`
    Mx(&'static str, &'static str, u16),
    /// `host A ip`
    A(&'static str, &'static str),
    /// `host A/AAAA ip`, for names and addresses made at run time.
    Host(String, IpAddr),
    /// `name TXT "text"`
    Txt(String, String),
}

impl Rec {
    /// `mail.NAME.example` at the agent's own address: its mail server is
    /// where its agent runs, which proves it speaks for its domains.
    pub fn mail_host(agent: &Agent) -> Rec {
        Rec::Host(format!("mail.{}.example", agent.name), agent.ip())
    }

    /// `_mxfed.DOMAIN TXT "v=mxfed1; id=ID"`: the domain names the agent as
    /// one that speaks for it.
    pub fn proof(domain: &str, agent: &Agent) -> Rec {
        Rec::Txt(
            format!("_mxfed.{domain}"),
            format!("v=mxfed1; id={}", agent.id()),
        )
    }
}

/// A real DNS server (dnsmasq) on a loopback address of its own, answering
/// only the records given and NXDOMAIN for anything else under the zones
/// given (everything else gets REFUSED, which the resolver treats as a
/// failure).
pub struct DnsServer {
    pub addr: SocketAddr,
    child: Option<Child>,
    /// The zones and records served now, and records served on every
    /// restart too (see [`DnsServer::pin`]).
    zones: Vec<String>,
    records: Vec<Rec>,
    pinned: Vec<Rec>,
    /// Where dnsmasq logs each query, once asked to (`log_queries`).
    log: Option<(tempfile::TempDir, PathBuf)>,
}

impl DnsServer {
    pub fn start(zones: &[&str], records: &[Rec]) -> DnsServer {
        let addr = SocketAddr::new(fresh_ip().into(), 5353);
        let mut d = DnsServer {
            addr,
            child: None,
            zones: Vec::new(),
            records: Vec::new(),
            pinned: Vec::new(),
            log: None,
        };
        d.restart(zones, records);
        d
    }

    /// Restarts with other zones and records (dnsmasq cannot reload them);
    /// pinned records stay.
    pub fn restart(&mut self, zones: &[&str], records: &[Rec]) {
        self.stop();
        self.zones = zones.iter().map(|z| z.to_string()).collect();
        self.records = records.to_vec();
        let mut all = self.records.clone();
        all.extend(self.pinned.iter().cloned());
        let zones = self.zones.clone();
        let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
        self.launch(&zones, &all);
    }

    /// From now on, logs every query (restarting dnsmasq).
    pub fn log_queries(&mut self) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("queries.log");
        self.log = Some((dir, file));
        let (zones, records) = (self.zones.clone(), self.records.clone());
        let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
        self.restart(&zones, &records);
    }

    /// How many queries of `qtype` for exactly `name` were logged.
    pub fn queries(&self, qtype: &str, name: &str) -> usize {
        let (_, file) = self.log.as_ref().expect("log_queries first");
        let needle = format!("query[{qtype}] {name} from");
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Adds records served from now on, across restarts (the agents' mail
    /// hosts, which exist only once the agents do).
    pub fn pin(&mut self, records: &[Rec]) {
        self.pinned.extend(records.iter().cloned());
        let (zones, records) = (self.zones.clone(), self.records.clone());
        let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
        self.restart(&zones, &records);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn launch(&mut self, zones: &[&str], records: &[Rec]) {
        let mut args = vec![
            "-k".to_string(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={}", self.addr.ip()),
            format!("--port={}", self.addr.port()),
            "--pid-file=".into(),
            "--local-ttl=0".into(),
        ];
        if let Some((_, file)) = &self.log {
            args.push("--log-queries".into());
            args.push(format!("--log-facility={}", file.display()));
        }
        for z in zones {
            args.push(format!("--local=/{z}/"));
        }
        for r in records {
            args.push(match r {
                Rec::Mx(d, h, p) => format!("--mx-host={d},{h},{p}"),
                Rec::A(h, ip) => format!("--host-record={h},{ip}"),
                Rec::Host(h, ip) => format!("--host-record={h},{ip}"),
                // No quotes: on the command line dnsmasq would keep them.
                Rec::Txt(name, text) => format!("--txt-record={name},{text}"),
            });
        }
        let child = Command::new("dnsmasq")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq not found: apt-get install dnsmasq-base (the test command, deploy/test.sh, installs it)");
        self.child = Some(child);
        wait_for("dnsmasq to answer", || dns_answers(self.addr));
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A DNS server for agents whose mail servers are where the agents run:
/// `mail.NAME.example` resolves to each agent's own address (so its claims
/// are proven) and nothing else exists under `example`. Each agent is told
/// to use it, and to accept loopback next hops. Keep it for the test's
/// length.
pub fn mail_dns(agents: &[&Agent]) -> DnsServer {
    let mut dns = DnsServer::start(&["example"], &[]);
    dns.pin(&agents.iter().map(|a| Rec::mail_host(a)).collect::<Vec<_>>());
    for a in agents {
        a.use_dns(&dns);
        a.configure("allow_non_public_next_hops = true");
    }
    dns
}

/// Whether a DNS server answers a query at all.
fn dns_answers(server: SocketAddr) -> bool {
    let sock = std::net::UdpSocket::bind((server.ip(), 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // ID 0x1234, RD, one question: "probe." A IN.
    let q = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, b'p', b'r', b'o', b'b', b'e', 0, 0, 1, 0, 1,
    ];
    if sock.send_to(&q, server).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    sock.recv_from(&mut buf).is_ok()
}

/// Writes a file of `n` generated domain names and returns its path.
pub fn domain_file(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("domains.txt");
    let mut text = String::with_capacity(n * 24);
    for i in 0..n {
        text.push_str(&format!("d{i:06}.bulk.example\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

impl RawPeer {
    /// Like [`RawPeer::request`], but `None` once the connection is gone
    /// or the answer does not come within 10 s (for floods).
    pub async fn try_request(
        &self,
        req: &mxfed_proto::msg::Request,
    ) -> Option<mxfed_proto::msg::Response> {
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.ok()?;
            send.write_all(&mxfed_proto::codec::frame(req).ok()?)
                .await
                .ok()?;
            send.finish().ok()?;
            mxfed_agent::frames::read(&mut recv).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .ok()
            .flatten()
    }

    /// Answers every request the agent sends on this connection with the
    /// frames `answer` gives, until the connection closes.
    pub fn serve(
        &self,
        answer: impl Fn(mxfed_proto::msg::Request) -> Vec<mxfed_proto::msg::Response>
            + Send
            + Sync
            + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let conn = self.conn.clone();
        let answer = std::sync::Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let answer = std::sync::Arc::clone(&answer);
                tokio::spawn(async move {
                    let Ok(req) =
                        mxfed_agent::frames::read::<mxfed_proto::msg::Request, _>(&mut recv).await
                    else {
                        return;
                    };
                    for resp in answer(req) {
                        let bytes = mxfed_proto::codec::frame(&resp).unwrap();
                        if send.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                    let _ = send.finish();
                    let _ = send.stopped().await;
                });
            }
        })
    }

    /// Sends one request and waits for its first answer frame.
    pub async fn request(&self, req: &mxfed_proto::msg::Request) -> mxfed_proto::msg::Response {
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        send.write_all(&mxfed_proto::codec::frame(req).unwrap())
            .await
            .unwrap();
        send.finish().unwrap();
        mxfed_agent::frames::read(&mut recv).await.unwrap()
    }
}

impl Agent {
    /// Kills the agent with SIGKILL (no chance to clean up).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Points the agent at a Postfix instance.
    pub fn use_postfix(&self, pf: &PostfixInstance) {
        self.configure(&format!("postfix_config_dir = \"{}\"", pf.etc().display()));
    }

    /// The last applies, newest first.
    pub fn history(&self) -> Vec<serde_json::Value> {
        let out = self.mxfed(&["history", "--json"]);
        assert_ok(&out, "history --json");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// A private Postfix instance in a temp dir, listening on 127.0.0.1 on a
/// port of its own (extra addresses are not on `lo` outside a namespace).
/// Clients from 127.0.0.1 are outside its `mynetworks`.
pub struct PostfixInstance {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (is postfix installed? the test command, deploy/test.sh, installs it)")
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl PostfixInstance {
    /// Writes the instance's config (with `extra` main.cf lines) and starts it.
    pub fn start(myhostname: &str, extra: &str) -> PostfixInstance {
        Self::start_in(tempfile::tempdir().unwrap(), myhostname, extra)
    }

    /// An instance that delivers every recipient of `domain` into one
    /// mailbox, `<dir>/mail/inbox/new/`, which [`Self::inbox`] counts.
    pub fn start_mailbox(myhostname: &str, domain: &str) -> PostfixInstance {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("mail");
        std::fs::create_dir_all(&base).unwrap();
        run(Command::new("chown").arg("65534:65534").arg(&base));
        let extra = format!(
            "virtual_mailbox_domains = {domain}\n\
             virtual_mailbox_base = {}\n\
             virtual_mailbox_maps = static:inbox/\n\
             virtual_uid_maps = static:65534\n\
             virtual_gid_maps = static:65534",
            base.display()
        );
        Self::start_in(dir, myhostname, &extra)
    }

    /// Messages delivered into the mailbox of [`Self::start_mailbox`].
    pub fn inbox(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("mail/inbox/new")).map_or(0, |d| d.count())
    }

    fn start_in(dir: tempfile::TempDir, myhostname: &str, extra: &str) -> PostfixInstance {
        let port = free_tcp_port();
        let root = dir.path();
        for d in ["etc", "queue", "data"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        run(Command::new("chown").arg("postfix").arg(root.join("data")));
        std::fs::copy("/etc/postfix/master.cf", root.join("etc/master.cf")).unwrap();
        let main = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {q}\n\
             data_directory = {d}\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = {myhostname}\n\
             mydestination = localhost\n\
             mynetworks = 127.0.0.2/32\n\
             maillog_file = {r}/maillog\n\
             maillog_file_prefixes = {r}\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
             alias_maps =\n\
             alias_database =\n\
             smtp_host_lookup = native\n\
             {extra}\n",
            q = root.join("queue").display(),
            d = root.join("data").display(),
            r = root.display(),
        );
        std::fs::write(root.join("etc/main.cf"), main).unwrap();
        let etc = root.join("etc");
        run(Command::new("postconf")
            .arg("-c")
            .arg(&etc)
            .args(["-F", "*/*/chroot = n"]));
        run(Command::new("postconf")
            .arg("-c")
            .arg(&etc)
            .args(["-MX", "smtp/inet"]));
        run(Command::new("postconf")
            .arg("-c")
            .arg(&etc)
            .arg("-M")
            .arg(format!(
                "127.0.0.1:{port}/inet = 127.0.0.1:{port} inet n - n - - smtpd"
            )));
        let pf = PostfixInstance { dir, port };
        pf.up();
        pf
    }

    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    pub fn up(&self) {
        run(Command::new("postfix")
            .arg("-c")
            .arg(self.etc())
            .arg("start"));
        wait_for("postfix to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// Stops the instance and waits until it is really gone.
    pub fn down(&self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.etc())
            .arg("stop")
            .output();
        wait_for("postfix to stop", || {
            let running = Command::new("postfix")
                .arg("-c")
                .arg(self.etc())
                .arg("status")
                .output()
                .is_ok_and(|o| o.status.success());
            !running && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
    }

    pub fn postconf(&self, name: &str) -> String {
        run(Command::new("postconf")
            .arg("-c")
            .arg(self.etc())
            .args(["-h", name]))
        .trim()
        .to_string()
    }

    pub fn main_cf(&self) -> String {
        std::fs::read_to_string(self.etc().join("main.cf")).unwrap()
    }

    /// The entries of mxfed's map source `<etc>/mxfed/NAME`, as written.
    pub fn map_source(&self, name: &str) -> std::collections::BTreeMap<String, String> {
        std::fs::read_to_string(self.etc().join("mxfed").join(name))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }

    /// `postmap -s TYPE:<etc>/mxfed/NAME`: every key/value of a live map db,
    /// or an error if the db is missing or unreadable.
    pub fn dump(
        &self,
        map_type: &str,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        let out = Command::new("postmap")
            .arg("-c")
            .arg(self.etc())
            .arg("-s")
            .arg(format!(
                "{map_type}:{}",
                self.etc().join("mxfed").join(name).display()
            ))
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect())
    }

    /// `postmap -q KEY TYPE:<etc>/mxfed/NAME` (works for every map type, cdb included).
    pub fn query(&self, map_type: &str, name: &str, key: &str) -> Option<String> {
        let out = Command::new("postmap")
            .arg("-c")
            .arg(self.etc())
            .arg("-q")
            .arg(key)
            .arg(format!(
                "{map_type}:{}",
                self.etc().join("mxfed").join(name).display()
            ))
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Sends one message to `rcpt` over SMTP from outside mynetworks; panics
    /// unless Postfix takes it (250 after the data).
    pub fn send(&self, rcpt: &str, subject: &str) {
        let mut smtp = Smtp::open(self.port);
        for (cmd, want) in [
            ("EHLO client.example".to_string(), 250),
            ("MAIL FROM:<someone@sender.example>".to_string(), 250),
            (format!("RCPT TO:<{rcpt}>"), 250),
            ("DATA".to_string(), 354),
            (format!("Subject: {subject}\r\n\r\nhello\r\n."), 250),
        ] {
            assert_eq!(smtp.command(&cmd), want, "{cmd}");
        }
    }

    /// Sends `n` messages to `rcpt` over one SMTP session, each with the
    /// header `Message-ID: <PREFIX.I@test.example>` (I from 0).
    pub fn send_many(&self, rcpt: &str, n: usize, prefix: &str) {
        let mut smtp = Smtp::open(self.port);
        assert_eq!(smtp.command("EHLO client.example"), 250);
        for i in 0..n {
            for (cmd, want) in [
                ("MAIL FROM:<someone@sender.example>".to_string(), 250),
                (format!("RCPT TO:<{rcpt}>"), 250),
                ("DATA".to_string(), 354),
                (
                    format!(
                        "Message-ID: <{prefix}.{i}@test.example>\r\nSubject: {i}\r\n\r\nhello\r\n."
                    ),
                    250,
                ),
            ] {
                assert_eq!(smtp.command(&cmd), want, "message {i}: {cmd}");
            }
        }
    }

    /// The Message-IDs of the messages in the mailbox of
    /// [`Self::start_mailbox`], one per message (repeats kept).
    pub fn inbox_message_ids(&self) -> Vec<String> {
        let dir = self.dir.path().join("mail/inbox/new");
        let mut ids = Vec::new();
        for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            let id = text
                .lines()
                .take_while(|l| !l.is_empty())
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("message-id")
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default();
            ids.push(id);
        }
        ids
    }

    /// `postqueue -s DOMAIN`, as an admin would type it.
    pub fn flush_by_hand(&self, domain: &str) {
        let out = Command::new("postqueue")
            .arg("-c")
            .arg(self.etc())
            .args(["-s", domain])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    /// Messages in this instance's queue (`postqueue -j`, one line each).
    pub fn queued(&self) -> usize {
        let out = Command::new("postqueue")
            .arg("-c")
            .arg(self.etc())
            .arg("-j")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// Opens an SMTP session from 127.0.0.1 (outside mynetworks) and returns
    /// the reply code to `RCPT TO:<rcpt>`.
    pub fn rcpt(&self, rcpt: &str) -> u16 {
        Self::rcpt_at(self.port, rcpt)
    }

    /// [`Self::rcpt`] to the instance listening on `port` (from a thread
    /// that does not hold the instance).
    pub fn rcpt_at(port: u16, rcpt: &str) -> u16 {
        let mut smtp = Smtp::open(port);
        assert_eq!(smtp.command("EHLO client.example"), 250);
        assert_eq!(smtp.command("MAIL FROM:<someone@sender.example>"), 250);
        smtp.command(&format!("RCPT TO:<{rcpt}>"))
    }

    /// The whole last line of the reply to `RCPT TO:<rcpt>`.
    pub fn rcpt_reply(&self, rcpt: &str) -> String {
        self.rcpt_reply_from(Ipv4Addr::LOCALHOST, rcpt)
    }

    /// [`Self::rcpt_reply`] from the client address `from` (a loopback
    /// address: 127.0.0.2 is in these instances' `mynetworks`).
    pub fn rcpt_reply_from(&self, from: Ipv4Addr, rcpt: &str) -> String {
        use std::io::{BufRead, Write};
        let mut smtp = Smtp::open_from(from, self.port);
        assert_eq!(smtp.command("EHLO client.example"), 250);
        assert_eq!(smtp.command("MAIL FROM:<someone@sender.example>"), 250);
        write!(smtp.writer, "RCPT TO:<{rcpt}>\r\n").unwrap();
        loop {
            let mut line = String::new();
            smtp.reader.read_line(&mut line).unwrap();
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return line.trim_end().to_string();
            }
        }
    }
}

/// The `Environment=` of `deploy/mxfed.service` (glibc's malloc tuning):
/// agents run here as the unit runs them, so the benchmarks measure what
/// is deployed.
pub fn unit_environment() -> Vec<(String, String)> {
    include_str!("../../deploy/mxfed.service")
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .flat_map(str::split_whitespace)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A minimal SMTP client session; says QUIT when dropped.
struct Smtp {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl Smtp {
    /// Connects to 127.0.0.1:`port` and reads the 220 greeting.
    fn open(port: u16) -> Smtp {
        Smtp::open_from(Ipv4Addr::LOCALHOST, port)
    }

    /// [`Smtp::open`] from the local address `from`.
    fn open_from(from: Ipv4Addr, port: u16) -> Smtp {
        // std cannot bind before connecting; tokio can, on a thread of its
        // own (callers may be inside a runtime already).
        let stream = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            rt.block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(from.into(), 0))?;
                let s = socket
                    .connect(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
                    .await?;
                s.into_std()
            })
        })
        .join()
        .unwrap()
        .unwrap();
        stream.set_nonblocking(false).unwrap();
        // `write!` may send a command in two writes; without this, Nagle
        // holds the second for the server's delayed ACK (40 ms a command).
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut smtp = Smtp {
            reader: std::io::BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        assert_eq!(smtp.reply(), 220);
        smtp
    }

    /// The code of the next (possibly multi-line) reply.
    fn reply(&mut self) -> u16 {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            }
        }
    }

    /// Sends one command line and returns the reply code.
    fn command(&mut self, cmd: &str) -> u16 {
        use std::io::Write;
        write!(self.writer, "{cmd}\r\n").unwrap();
        self.reply()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = write!(self.writer, "QUIT\r\n");
    }
}

impl Drop for PostfixInstance {
    fn drop(&mut self) {
        self.down();
    }
}

/// `bash deploy/SCRIPT ARG` with `env` and this build's `mxfed` as
/// `MXFED_BIN`. The deploy scripts need root (namespaces, containers); CI
/// runs as root, and nothing is skipped.
pub fn deploy_script(script: &str, arg: &str, env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let id = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&id.stdout).trim(),
        "0",
        "deploy/{script} needs root (CI runs as root)"
    );
    Command::new("bash")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy")
                .join(script),
        )
        .arg(arg)
        .envs(env.iter().copied())
        .env("MXFED_BIN", MXFED)
        .output()
        .unwrap()
}

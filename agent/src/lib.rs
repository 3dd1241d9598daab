//! mxfed-agent: the daemon behind `mxfed agent`, as a library.
//!
//! The agent is a handful of services, each owning its state and tasks
//! behind a small handle, wired together in [`run`]:
//!
//! - `peer`: sessions with paired friends (dial, accept, serve, the
//!   duplicate-connection rule), pairing, and `Peers`, the one interface
//!   the other services reach peers through;
//! - `lists`: my signed list and my friends' lists, judged and re-checked;
//! - `relay`: the apply worker that keeps Postfix's maps in step;
//! - `queue`: the queue scanner, reports to friends, and flushes;
//! - `control`, `status`, `metrics`, `doctor`: readers, through the handles.
//!
//! Beneath them: [`config`], [`identity`], [`store`] (the only SQL),
//! [`postfix`] (the only Postfix I/O), [`dns`], [`net`] (quinn and rustls),
//! [`frames`], [`mailq`], and [`clock`] (injectable time).
//!
//! [`run`] is the daemon; [`init`] sets up a new agent.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod clock;
pub mod config;
pub mod control;
pub mod dns;
mod doctor;
pub mod frames;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
mod lists;
pub mod mailq;
mod metrics;
pub mod net;
mod peer;
mod policy;
pub mod postfix;
mod queue;
mod recipients;
mod relay;
mod services;
mod status;
pub mod store;
mod systemd;
mod util;

pub use relay::MIN_APPLY_GAP;

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use clock::Clock;
use config::{Config, ConfigError};
use identity::{Identity, IdentityError};
use lists::Lists;
use mxfed_proto::PeerId;
use peer::{Pairing, Peers, Sessions};
use queue::Queue;
use relay::Relay;
use services::{Router, Services};
use store::{Store, StoreError};

/// sysexits EX_CONFIG: a config file or data dir cannot be used.
pub const EX_CONFIG: i32 = 78;
/// sysexits EX_UNAVAILABLE: a service the command needs is not there.
pub const EX_UNAVAILABLE: i32 = 69;

/// Why the agent could not start or `init` could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The config file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The identity files.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The QUIC endpoint.
    #[error(transparent)]
    Net(#[from] net::NetError),
    /// The control socket.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// Postfix could not be read.
    #[error(transparent)]
    Postfix(#[from] postfix::PostfixError),
    /// The DNS resolver could not be set up.
    #[error("{0}")]
    Dns(String),
    /// The data dir is missing or has no identity.
    #[error("data dir {path}: {message}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl AgentError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Config(_)
            | AgentError::DataDir { .. }
            | AgentError::Identity(_)
            | AgentError::Store(_) => EX_CONFIG,
            _ => 1,
        }
    }
}

/// What `init` did.
#[derive(Debug)]
pub struct InitReport {
    /// The agent's peer ID.
    pub id: PeerId,
    /// Whether an existing identity in the data dir was kept.
    pub kept_identity: bool,
}

/// Sets up a new agent: data dir (0700), identity, database, and the config
/// file at `config_path`. Refuses to overwrite an existing config file.
pub async fn init(config: &Config, config_path: &Path) -> Result<InitReport, AgentError> {
    config.check(config_path)?;
    if config_path.exists() {
        return Err(ConfigError::Invalid {
            path: config_path.into(),
            key: "(file)",
            message: "already exists; remove it to initialise again".into(),
        }
        .into());
    }
    let dir = &config.data_dir;
    let dir_err = |e: std::io::Error| AgentError::DataDir {
        path: dir.clone(),
        message: e.to_string(),
    };
    if dir.exists() {
        // Never change the mode of a directory we did not make (think
        // `--data-dir /var/lib`); refuse one that others can read instead.
        let mode = std::fs::metadata(dir)
            .map_err(dir_err)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(AgentError::DataDir {
                path: dir.clone(),
                message: format!(
                    "is accessible by group or others (mode {:o}); use a private directory (chmod 700) for the key",
                    mode & 0o777
                ),
            });
        }
    } else {
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
    }
    let kept_identity = Identity::exists(dir);
    let identity = if kept_identity {
        Identity::load(dir)?
    } else {
        Identity::create(dir)?
    };
    Store::open(&config.db_path()).await?.close().await;
    if let Some(parent) = config_path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ConfigError::Read {
            path: config_path.into(),
            source,
        })?;
    }
    std::fs::write(config_path, config.to_toml()).map_err(|source| ConfigError::Read {
        path: config_path.into(),
        source,
    })?;
    Ok(InitReport {
        id: identity.id,
        kept_identity,
    })
}

/// How long shutdown waits for the services' tasks to finish, once any
/// Postfix map apply in progress has finished (that wait has no limit).
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Runs the agent until `shutdown` completes, then drains gracefully
/// (peers see a `shutdown` close, not a timeout; no apply is cut off).
/// Each config received on `reloads` (the file read again on SIGHUP) is
/// put in force for its live keys ([`config::LIVE_KEYS`]); the log names
/// what changed, and the other keys that changed and wait for a restart.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    reloads: tokio::sync::mpsc::Receiver<Config>,
) -> Result<(), AgentError> {
    run_with_clock(config, Clock::system(), shutdown, reloads).await
}

/// [`run`] with the given clock.
pub async fn run_with_clock(
    config: Config,
    clock: Clock,
    shutdown: impl Future<Output = ()>,
    mut reloads: tokio::sync::mpsc::Receiver<Config>,
) -> Result<(), AgentError> {
    let dir = &config.data_dir;
    if !Identity::exists(dir) {
        return Err(AgentError::DataDir {
            path: dir.clone(),
            message: "no identity here; run `mxfed init` first".into(),
        });
    }
    let identity = Arc::new(Identity::load(dir)?);
    if !config.db_path().exists() {
        // An identity without its database would start with no peers, and
        // every friend would be told "not paired" and drop us. Refuse.
        return Err(AgentError::DataDir {
            path: config.db_path(),
            message: "is missing although the identity exists; restore it from backup, or move the data dir aside and run `mxfed init` to start afresh".into(),
        });
    }
    let store = Store::open(&config.db_path()).await?;
    let endpoint = net::bind(&identity, config.listen)?;
    let listener = control::bind(&config.control_socket)?;
    // Without its policy service the agent still runs: Postfix then takes
    // the default action (DUNNO) and friends' when-down mode is not kept.
    let policy_listener = match policy::Policy::bind(&config.policy_listen).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(listen = %config.policy_listen, "cannot serve Postfix's policy requests ({e}); friends in when-down mode get mail as if always");
            None
        }
    };
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Net(net::NetError::Bind { addr, source }))?,
        ),
        None => None,
    };
    let paired = store.peers().await?;
    let local = endpoint
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let socket = config.control_socket.clone();
    tracing::info!(
        name = %config.name,
        id = %identity.id,
        listen = %local,
        control = %socket.display(),
        peers = paired.len(),
        "mxfed agent {} started",
        mxfed_proto::VERSION
    );
    let dns = dns::Dns::new(&config.dns_servers).map_err(|e| AgentError::Dns(e.to_string()))?;
    let postfix = if postfix::Postfix::present(&config.postfix_config_dir) {
        let map_type =
            (!config.postfix_map_type.is_empty()).then_some(config.postfix_map_type.as_str());
        match postfix::Postfix::open(&config.postfix_config_dir, map_type).await {
            Ok(p) => {
                tracing::info!(dir = %config.postfix_config_dir.display(), map_type = p.map_type(), "Postfix integration on");
                // An installation set up by an older version learns here
                // (and from `mxfed doctor`) what this one also needs.
                if let Ok(plan) = p.plan_setup(false, &config.policy_listen).await {
                    if !plan.changes.is_empty() {
                        let names: Vec<&str> =
                            plan.changes.iter().map(|c| c.name.as_str()).collect();
                        tracing::warn!(
                            "main.cf is not wired for everything this version does ({}): run `mxfed postfix setup`",
                            names.join(", ")
                        );
                    }
                }
                Some(p)
            }
            Err(e) => return Err(AgentError::Postfix(e)),
        }
    } else {
        tracing::warn!(dir = %config.postfix_config_dir.display(), "no main.cf there: Postfix integration is off (lists are still exchanged and judged)");
        None
    };
    let config = config::Shared::new(config);

    // The services, bottom up: each gets the handles of those it uses.
    let (peers, dial_orders) = Peers::new(
        Arc::clone(&config),
        Arc::clone(&identity),
        endpoint.clone(),
        store.clone(),
        clock.clone(),
    );
    let (relay, apply_worker) = Relay::new(
        postfix.clone(),
        store.clone(),
        Arc::clone(&config),
        clock.clone(),
        dns.clone(),
    );
    let lists = Lists::new(
        Arc::clone(&config),
        Arc::clone(&identity),
        store.clone(),
        dns.clone(),
        postfix.clone(),
        peers.clone(),
        relay.clone(),
        clock.clone(),
    )
    .await?;
    let recipients = recipients::Recipients::new(
        Arc::clone(&config),
        Arc::clone(&identity),
        store.clone(),
        postfix.clone(),
        peers.clone(),
        relay.clone(),
        lists.clone(),
        clock.clone(),
    );
    let queue = Queue::new(postfix.clone(), store.clone(), peers.clone(), clock.clone());
    let policy = policy::Policy::new(
        Arc::clone(&config),
        store.clone(),
        queue.clone(),
        clock.clone(),
        postfix.clone(),
    );
    let pairing = Pairing::new(peers.clone());
    let cancel = CancellationToken::new();
    let sessions = Sessions::new(
        peers.clone(),
        pairing.clone(),
        Arc::new(Router {
            lists: lists.clone(),
            recipients: recipients.clone(),
            queue: queue.clone(),
        }),
        lists.version_watch(),
        cancel.clone(),
    );
    let services = Services {
        config: Arc::clone(&config),
        identity,
        store: store.clone(),
        clock,
        dns,
        postfix,
        peers: peers.clone(),
        pairing,
        lists: lists.clone(),
        recipients: recipients.clone(),
        relay: relay.clone(),
        queue: queue.clone(),
    };

    // Their tasks, each stopping at a safe point once `cancel` fires.
    let mut tasks = Tasks::default();
    // Subscribe before any session can come up, so no event is missed.
    tasks.spawn(
        "lists: peer events",
        lists.clone().follow_peers(cancel.clone()),
    );
    tasks.spawn(
        "queue: peer events",
        queue.clone().follow_peers(cancel.clone()),
    );
    tasks.spawn(
        "recipients: peer events",
        recipients.clone().follow_peers(cancel.clone()),
    );
    tasks.spawn(
        "recipients: publish",
        recipients.clone().run_publish(cancel.clone()),
    );
    // Probes only serve the policy service: none without it.
    if let Some(listener) = policy_listener {
        tasks.spawn("policy: probes", policy.clone().run_probes(cancel.clone()));
        tasks.spawn("policy: service", policy.serve(listener, cancel.clone()));
    }
    tasks.spawn(
        "peer: dialers",
        Arc::clone(&sessions).run_dialers(dial_orders),
    );
    tasks.spawn("peer: accept", Arc::clone(&sessions).run_accept());
    tasks.spawn("relay: apply worker", apply_worker.run(cancel.clone()));
    tasks.spawn("lists: refresh", lists.clone().run_refresh(cancel.clone()));
    tasks.spawn("lists: re-check", lists.run_recheck(cancel.clone()));
    tasks.spawn("queue: flusher", queue.clone().run_flusher(cancel.clone()));
    tasks.spawn(
        "queue: my Postfix",
        queue.clone().run_mta_watch(cancel.clone()),
    );
    tasks.spawn("queue: scanner", queue.run(cancel.clone()));
    tasks.spawn(
        "control socket",
        control::serve(services.clone(), listener, cancel.clone()),
    );
    if let Some(l) = metrics_listener {
        tasks.spawn("metrics", metrics::serve(services, l, cancel.clone()));
    }
    // Converge after a restart or crash: whatever the maps hold, make them
    // match the store.
    relay.request_apply("startup");
    for p in paired {
        peers.start_dialer(p.id);
    }

    // Serving: systemd (Type=notify) may count the agent as started.
    systemd::ready();
    if let Some(every) = systemd::watchdog_interval() {
        tasks.spawn("systemd watchdog", systemd::watchdog(every, cancel.clone()));
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(new) = reloads.recv() => {
                systemd::reloading();
                reload(&config, new, &relay);
                systemd::ready();
            }
        }
    }
    systemd::stopping();
    tracing::info!("shutting down");
    cancel.cancel();
    endpoint.close(
        mxfed_proto::msg::close::SHUTDOWN.into(),
        b"agent shutting down",
    );
    // An apply in progress (the worker's or `mxfed apply`'s) finishes, with
    // its rollback if it fails; none starts after this.
    relay.close().await;
    tasks.drain(DRAIN_GRACE).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
    let _ = std::fs::remove_file(&socket);
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Puts a config read again on SIGHUP in force: its live keys now, the
/// others at the next restart (named in the log). Services read the live
/// keys at each use (judging keys apply to every judgment from now on,
/// including each accepted entry's next re-check); the re-check rounds and
/// the recipients publisher wake on the change themselves; a new
/// `expired_list_grace` is taken into Postfix's maps by an apply at once.
fn reload(config: &config::Shared, new: Config, relay: &Relay) {
    let (running, change) = config.get().reloaded(&new);
    if !change.need_restart.is_empty() {
        tracing::warn!(
            step = "config reload",
            keys = ?change.need_restart,
            "these keys changed in the config file but take a restart (systemctl restart mxfed); until then the agent keeps their old values"
        );
    }
    if change.applied.is_empty() {
        tracing::info!(
            step = "config reload",
            "config read again: no live key changed"
        );
        return;
    }
    config.replace(running);
    tracing::info!(
        step = "config reload",
        keys = ?change.applied,
        "config read again: these keys are in force now"
    );
    if change.applied.iter().any(|k| k == "expired_list_grace") {
        relay.request_apply("config reload: expired_list_grace");
    }
}

/// The services' long-lived tasks, named for the shutdown log.
#[derive(Default)]
struct Tasks {
    set: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Waits up to `grace` for every task to return; stops the rest,
    /// naming them.
    async fn drain(mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, self.set.join_next_with_id()).await {
                Ok(None) => return,
                Ok(Some(Ok((id, ())))) => {
                    self.names.remove(&id);
                }
                Ok(Some(Err(e))) => {
                    let name = self.names.remove(&e.id()).unwrap_or("?");
                    tracing::error!(task = name, "task ended abnormally: {e}");
                }
                Err(_) => {
                    let mut running: Vec<&str> = self.names.into_values().collect();
                    running.sort_unstable();
                    tracing::warn!(
                        tasks = ?running,
                        "still running after {}s; stopping them",
                        grace.as_secs()
                    );
                    self.set.shutdown().await;
                    return;
                }
            }
        }
    }
}

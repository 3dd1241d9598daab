//! mxfed-agent: the daemon behind `mxfed agent`, as a library.
//!
//! - [`config`]: the TOML config, checked before anything is bound.
//! - [`identity`]: the Ed25519 key and self-signed certificate.
//! - [`store`]: SQLite state (the only module that speaks SQL).
//! - [`net`]: the quinn endpoint and the rustls verifiers that pin keys.
//! - `session`: dialling, accepting, pairing and serving peers.
//! - `control`: the Unix socket the CLI talks to.
//!
//! [`run`] is the daemon; [`init`] sets up a new agent.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod control;
pub mod dns;
mod doctor;
pub mod frames;
pub mod identity;
mod limiter;
mod lists;
pub mod mailq;
mod metrics;
pub mod net;
pub mod postfix;
mod queue;
mod relay;
mod session;
pub mod store;

pub use relay::MIN_APPLY_GAP;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use config::{Config, ConfigError};
use identity::{Identity, IdentityError};
use mxfed_proto::PeerId;
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

/// Runs the agent until `shutdown` completes, then closes sessions
/// gracefully (peers see a `shutdown` close, not a timeout).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let dir = &config.data_dir;
    if !Identity::exists(dir) {
        return Err(AgentError::DataDir {
            path: dir.clone(),
            message: "no identity here; run `mxfed init` first".into(),
        });
    }
    let identity = Identity::load(dir)?;
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
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Net(net::NetError::Bind { addr, source }))?,
        ),
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let peers = store.peers().await?;
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
        peers = peers.len(),
        "mxfed agent {} started",
        mxfed_proto::VERSION
    );
    let dns = dns::Dns::new(&config.dns_servers).map_err(|e| AgentError::Dns(e.to_string()))?;
    let mine = lists::load_mine(&store, identity.id).await?;
    let list_state = lists::ListState::new(dns, mine);
    let postfix = if postfix::Postfix::present(&config.postfix_config_dir) {
        let map_type =
            (!config.postfix_map_type.is_empty()).then_some(config.postfix_map_type.as_str());
        match postfix::Postfix::open(&config.postfix_config_dir, map_type).await {
            Ok(p) => {
                tracing::info!(dir = %config.postfix_config_dir.display(), map_type = p.map_type(), "Postfix integration on");
                Some(p)
            }
            Err(e) => return Err(AgentError::Postfix(e)),
        }
    } else {
        tracing::warn!(dir = %config.postfix_config_dir.display(), "no main.cf there: Postfix integration is off (lists are still exchanged and judged)");
        None
    };
    let relay_state = relay::RelayState::new(postfix);
    let shared = session::Shared::new(
        config,
        identity,
        store.clone(),
        endpoint.clone(),
        list_state,
        relay_state,
        stop_rx,
    );
    let accept = tokio::spawn(std::sync::Arc::clone(&shared).accept_loop());
    let control = tokio::spawn(control::serve(std::sync::Arc::clone(&shared), listener));
    let background = [
        tokio::spawn(std::sync::Arc::clone(&shared).recheck_loop()),
        tokio::spawn(std::sync::Arc::clone(&shared).refresh_loop()),
        tokio::spawn(std::sync::Arc::clone(&shared).apply_loop()),
        tokio::spawn(std::sync::Arc::clone(&shared).queue_loop()),
        tokio::spawn({
            let shared = std::sync::Arc::clone(&shared);
            async move {
                if let Some(l) = metrics_listener {
                    metrics::serve(shared, l).await
                }
            }
        }),
    ];
    // Converge after a restart or crash: whatever the maps hold, make them
    // match the store.
    shared.request_apply("startup");
    for p in peers {
        shared.start_dialer(p.id);
    }

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    control.abort();
    for task in background {
        task.abort();
    }
    shared.stop_all_dialers();
    endpoint.close(
        mxfed_proto::msg::close::SHUTDOWN.into(),
        b"agent shutting down",
    );
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
    let _ = accept.await;
    let _ = std::fs::remove_file(&socket);
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

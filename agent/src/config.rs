//! [`Config`]: the TOML file `mxfed init` writes and every other command reads.
//!
//! It is loaded and checked before any socket is bound; a bad file is a
//! [`ConfigError`] that names the file and the key, and the CLI exits 78.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use mxfed_proto::name;

/// UDP port agents listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7787;
/// Default config file.
pub const DEFAULT_CONFIG: &str = "/etc/mxfed/mxfed.toml";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/mxfed";
/// Default Postfix config directory.
pub const DEFAULT_POSTFIX_DIR: &str = "/etc/postfix";
/// Default control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/mxfed/control.sock";

/// The agent's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This agent's name, shown to friends.
    pub name: String,
    /// Host name of this server's own Postfix, the host friends' MX records name.
    pub mail_host: String,
    /// UDP address the QUIC endpoint binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Addresses put in invites and told to peers; where friends dial us.
    #[serde(default)]
    pub advertise: Vec<SocketAddr>,
    /// Where the identity and `mxfed.db` live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The Postfix config directory (`postconf -c DIR`).
    #[serde(default = "default_postfix_dir")]
    pub postfix_config_dir: PathBuf,
    /// The Unix socket the CLI talks to the agent on.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Whether a friend's domain must have MX records naming both my mail
    /// host and the friend's next hop before I relay for it.
    #[serde(default)]
    pub verify_mx: VerifyMx,
    /// DNS servers for the MX checks; empty means the system's resolver
    /// configuration (`/etc/resolv.conf`).
    #[serde(default)]
    pub dns_servers: Vec<SocketAddr>,
    /// How often refused and pending entries of friends' lists are checked again.
    #[serde(default = "default_recheck")]
    pub recheck_interval: HumanDuration,
    /// How long an accepted entry goes before it is checked against DNS
    /// again (at the next re-check round after that), whether or not its
    /// friend republishes.
    #[serde(default = "default_reverify")]
    pub reverify_interval: HumanDuration,
    /// Map type for the mxfed maps (`hash`, `lmdb`, `cdb`, ...); empty means
    /// Postfix's `default_database_type`.
    #[serde(default)]
    pub postfix_map_type: String,
    /// How long a friend's list stays in force after it expired (the friend
    /// re-signs daily while its agent runs, and a list lasts 14 days).
    #[serde(default = "default_grace")]
    pub expired_list_grace: HumanDuration,
    /// Accept friends' next hops on loopback, private or link-local
    /// addresses. For labs and friends on one private network only.
    #[serde(default)]
    pub allow_non_public_next_hops: bool,
    /// The only ports a friend's next hop may name (`host:port`); a next hop
    /// without a port means 25.
    #[serde(default = "default_next_hop_ports")]
    pub allowed_next_hop_ports: Vec<u16>,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the valid recipients of my domains come from, which my
    /// friends' backups accept (and no others).
    #[serde(default)]
    pub recipients: RecipientsSource,
    /// Whether friends back my mail up always, or only while my own server
    /// does not accept it (they answer 4xx naming it while it does).
    #[serde(default)]
    pub backup_mode: BackupMode,
    /// Where the agent serves Postfix's policy requests
    /// (`check_policy_service`), which carry out friends' `when-down` mode
    /// here: `unix:PATH` (the default, in Postfix's `private/`, which only
    /// root and Postfix can write) or a loopback `IP:PORT`.
    #[serde(default)]
    pub policy_listen: PolicyAddr,
    /// Files (PEM certificates or public keys) whose keys are announced to
    /// friends beside those Postfix uses now, before a key rollover: stage
    /// the new certificate here, wait for friends to hold it, then install
    /// it in Postfix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_next_keys: Vec<PathBuf>,
}

pub use crate::postfix::{PolicyAddr, DEFAULT_POLICY_SOCKET};

/// The `backup_mode` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupMode {
    /// Friends accept my mail whenever it reaches them.
    #[default]
    Always,
    /// Friends accept my mail only while my own server does not.
    WhenDown,
}

/// The `recipients` setting: `"postfix"`, `"off"`, or a file's path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RecipientsSource {
    /// Read them from this Postfix's tables.
    #[default]
    Postfix,
    /// Publish none: friends accept every recipient of my domains.
    Off,
    /// One address or `@domain` per line (for SQL and LDAP setups).
    File(PathBuf),
}

impl Serialize for RecipientsSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Postfix => s.serialize_str("postfix"),
            Self::Off => s.serialize_str("off"),
            Self::File(p) => s.collect_str(&p.display()),
        }
    }
}

impl<'de> Deserialize<'de> for RecipientsSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "postfix" => Ok(Self::Postfix),
            "off" => Ok(Self::Off),
            p if p.starts_with('/') => Ok(Self::File(p.into())),
            _ => Err(serde::de::Error::custom(format!(
                "{s:?}: recipients is \"postfix\", \"off\", or an absolute file path"
            ))),
        }
    }
}

/// Ports a friend's next hop may name unless the config says otherwise:
/// SMTP, submission, and the usual alternative SMTP port.
pub const DEFAULT_NEXT_HOP_PORTS: [u16; 3] = [25, 587, 2525];

fn default_next_hop_ports() -> Vec<u16> {
    DEFAULT_NEXT_HOP_PORTS.to_vec()
}

fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 86_400))
}

/// The `verify_mx` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMx {
    /// Refuse an entry whose MX does not name both hosts.
    #[default]
    Require,
    /// Accept it, but say what is missing.
    Warn,
    /// Do not look at DNS.
    Off,
}

/// A duration written the humantime way in the config: `"5m"`, `"30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

fn default_recheck() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_reverify() -> HumanDuration {
    HumanDuration(Duration::from_secs(86_400))
}

fn default_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::from([0, 0, 0, 0]), DEFAULT_PORT)
}
fn default_data_dir() -> PathBuf {
    DEFAULT_DATA_DIR.into()
}
fn default_postfix_dir() -> PathBuf {
    DEFAULT_POSTFIX_DIR.into()
}
fn default_control_socket() -> PathBuf {
    DEFAULT_CONTROL_SOCKET.into()
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, including line and key.
        message: String,
    },
    /// A key has a value that cannot work.
    #[error("config {path}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The keys `systemctl reload mxfed` (SIGHUP) applies while the agent runs.
/// Any other key is read once at start: a change to it is named in the log
/// as needing a restart, and the running agent keeps its old value.
pub const LIVE_KEYS: &[&str] = &[
    "advertise",
    "verify_mx",
    "recheck_interval",
    "reverify_interval",
    "expired_list_grace",
    "allow_non_public_next_hops",
    "allowed_next_hop_ports",
    "recipients",
    "backup_mode",
    "tls_next_keys",
];

/// The config the agent's services share: the one it started with, but for
/// the [`LIVE_KEYS`], which a reload (SIGHUP) replaces. Read it afresh at
/// each use ([`Shared::get`]); loops that wait on a live key wake on a
/// change ([`Shared::changed`]).
#[derive(Debug)]
pub struct Shared(tokio::sync::watch::Sender<Arc<Config>>);

impl Shared {
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self(tokio::sync::watch::Sender::new(Arc::new(config))))
    }

    /// The config in force now.
    pub fn get(&self) -> Arc<Config> {
        self.0.borrow().clone()
    }

    /// Puts `config` in force (the result of [`Config::reloaded`]).
    pub fn replace(&self, config: Config) {
        self.0.send_replace(Arc::new(config));
    }

    /// A receiver that sees each [`Shared::replace`] from now on.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<Arc<Config>> {
        self.0.subscribe()
    }
}

/// What a reload changes: see [`Config::reloaded`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reload {
    /// Live keys whose value changed; they are in force now.
    pub applied: Vec<String>,
    /// Other keys whose value changed; they wait for a restart.
    pub need_restart: Vec<String>,
}

impl Config {
    /// The config to run with after reading `new` on a reload: `new`'s
    /// value for each of [`LIVE_KEYS`], this one's for every other key
    /// (those take a restart). Says which keys changed, sorted by name.
    pub fn reloaded(&self, new: &Config) -> (Config, Reload) {
        let table = |c: &Config| match toml::Value::try_from(c) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        let (old_t, new_t) = (table(self), table(new));
        let mut keys: Vec<&String> = new_t.keys().chain(old_t.keys()).collect();
        keys.sort();
        keys.dedup();
        let mut report = Reload::default();
        for key in keys {
            if old_t.get(key) != new_t.get(key) {
                match LIVE_KEYS.contains(&key.as_str()) {
                    true => report.applied.push(key.clone()),
                    false => report.need_restart.push(key.clone()),
                }
            }
        }
        let mut running = self.clone();
        running.advertise = new.advertise.clone();
        running.verify_mx = new.verify_mx;
        running.recheck_interval = new.recheck_interval;
        running.reverify_interval = new.reverify_interval;
        running.expired_list_grace = new.expired_list_grace;
        running.allow_non_public_next_hops = new.allow_non_public_next_hops;
        running.allowed_next_hop_ports = new.allowed_next_hop_ports.clone();
        running.recipients = new.recipients.clone();
        running.backup_mode = new.backup_mode;
        running.tls_next_keys = new.tls_next_keys.clone();
        (running, report)
    }

    /// A config with defaults for everything but the two required keys.
    pub fn new(name: String, mail_host: String) -> Self {
        Self {
            name,
            mail_host,
            listen: default_listen(),
            advertise: Vec::new(),
            data_dir: default_data_dir(),
            postfix_config_dir: default_postfix_dir(),
            control_socket: default_control_socket(),
            verify_mx: VerifyMx::default(),
            dns_servers: Vec::new(),
            recheck_interval: default_recheck(),
            reverify_interval: default_reverify(),
            postfix_map_type: String::new(),
            expired_list_grace: default_grace(),
            allow_non_public_next_hops: false,
            allowed_next_hop_ports: default_next_hop_ports(),
            metrics_listen: None,
            recipients: RecipientsSource::default(),
            backup_mode: BackupMode::default(),
            policy_listen: PolicyAddr::default(),
            tls_next_keys: Vec::new(),
        }
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks a config file's text; `path` is only for errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.check(path)?;
        Ok(config)
    }

    /// Checks the values; `path` is only for the error message.
    pub fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.into(),
            key,
            message,
        };
        name::check_agent_name(&self.name).map_err(|e| invalid("name", e.to_string()))?;
        name::check_hostname("mail host", &self.mail_host)
            .map_err(|e| invalid("mail_host", e.to_string()))?;
        if self.advertise.len() > mxfed_proto::token::MAX_ADDRS {
            return Err(invalid(
                "advertise",
                format!("at most {} addresses", mxfed_proto::token::MAX_ADDRS),
            ));
        }
        for a in &self.advertise {
            if a.ip().is_unspecified() || a.port() == 0 {
                return Err(invalid(
                    "advertise",
                    format!("{a} is not an address a friend can dial"),
                ));
            }
        }
        if let Some(p) = self.tls_next_keys.iter().find(|p| !p.is_absolute()) {
            return Err(invalid(
                "tls_next_keys",
                format!("{}: must be an absolute path", p.display()),
            ));
        }
        if self.recheck_interval.0 < Duration::from_secs(1) {
            return Err(invalid("recheck_interval", "must be at least 1s".into()));
        }
        if self.reverify_interval.0 < Duration::from_secs(1) {
            return Err(invalid("reverify_interval", "must be at least 1s".into()));
        }
        if self.allowed_next_hop_ports.is_empty() || self.allowed_next_hop_ports.contains(&0) {
            return Err(invalid(
                "allowed_next_hop_ports",
                "must list at least one port, none of them 0".into(),
            ));
        }
        if !self.postfix_map_type.is_empty()
            && !crate::postfix::SUPPORTED_MAP_TYPES.contains(&self.postfix_map_type.as_str())
        {
            return Err(invalid(
                "postfix_map_type",
                format!(
                    "{:?} is not one of {} (empty: Postfix's default_database_type)",
                    self.postfix_map_type,
                    crate::postfix::SUPPORTED_MAP_TYPES.join(", ")
                ),
            ));
        }
        for (key, p) in [
            ("data_dir", &self.data_dir),
            ("postfix_config_dir", &self.postfix_config_dir),
            ("control_socket", &self.control_socket),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} must be an absolute path", p.display()),
                ));
            }
        }
        Ok(())
    }

    /// The TOML text `init` writes.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!("# mxfed agent configuration, written by `mxfed init`.\n# Keys are described in README.md (\"Config keys\").\n{body}")
    }

    /// The SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("mxfed.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mxfed.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn written_config_loads_back() {
        let mut c = Config::new("me".into(), "mail.me.example".into());
        c.advertise = vec!["192.0.2.1:7787".parse().unwrap()];
        let (_d, p) = write(&c.to_toml());
        assert_eq!(Config::load(&p).unwrap(), c);
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let (_d, p) = write("name = \"me\"\nmail_host = \"not a host\"\n");
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("mxfed.toml") && e.contains("mail_host"), "{e}");

        let (_d, p) = write("name = \"me\"\nmail_host = \"m.x.example\"\nlisten = 5\n");
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("mxfed.toml") && e.contains("listen"), "{e}");

        let (_d, p) = write("name = \"me\"\nmail_host = \"m.x.example\"\nlistn = \"1.2.3.4:1\"\n");
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("listn"), "{e}");

        let (_d, p) = write("\u{0}\u{1}garbage[[");
        assert!(matches!(Config::load(&p), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn a_reload_takes_the_live_keys_and_names_the_rest() {
        let old = Config::new("me".into(), "mail.me.example".into());
        let mut new = old.clone();
        new.verify_mx = VerifyMx::Warn;
        new.expired_list_grace = HumanDuration(Duration::from_secs(60));
        new.listen = "127.0.0.1:9".parse().unwrap();
        new.metrics_listen = Some("127.0.0.1:9787".parse().unwrap());
        let (running, r) = old.reloaded(&new);
        assert_eq!(r.applied, ["expired_list_grace", "verify_mx"]);
        assert_eq!(r.need_restart, ["listen", "metrics_listen"]);
        assert_eq!(running.verify_mx, VerifyMx::Warn);
        assert_eq!(running.expired_list_grace, new.expired_list_grace);
        assert_eq!(running.listen, old.listen);
        assert_eq!(running.metrics_listen, None);
        // Every live key is taken over: a reload to `new` changes nothing more.
        let mut every = old.clone();
        every.advertise = vec!["192.0.2.1:7787".parse().unwrap()];
        every.verify_mx = VerifyMx::Off;
        every.recheck_interval = HumanDuration(Duration::from_secs(1));
        every.reverify_interval = HumanDuration(Duration::from_secs(2));
        every.expired_list_grace = HumanDuration(Duration::from_secs(3));
        every.allow_non_public_next_hops = true;
        every.allowed_next_hop_ports = vec![25];
        every.recipients = RecipientsSource::Off;
        every.backup_mode = BackupMode::WhenDown;
        every.tls_next_keys = vec!["/etc/mxfed/next.pem".into()];
        let (running, r) = old.reloaded(&every);
        assert_eq!(running, every);
        assert_eq!(r.applied.len(), LIVE_KEYS.len(), "{r:?}");
        assert!(r.need_restart.is_empty());
        assert_eq!(running.reloaded(&every).1, Reload::default());
    }

    #[test]
    fn the_example_config_parses_and_documents_every_key() {
        let text = include_str!("../../deploy/mxfed.toml.example");
        let (_d, p) = write(text);
        Config::load(&p).unwrap();
        let full = toml::to_string(&Config::new("me".into(), "mail.me.example".into())).unwrap();
        for line in full.lines() {
            let key = line.split('=').next().unwrap().trim();
            assert!(text.contains(&format!("\n{key} = ")), "example lacks {key}");
        }
    }
}

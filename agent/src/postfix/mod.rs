//! Postfix: the only module that runs Postfix commands or writes Postfix files.
//!
//! - [`render`] (pure): accepted entries to map text, and diffs.
//! - [`Postfix::apply_texts`] (and [`Postfix::apply_changes`], the same for
//!   maps given as entries): writes each map that changes under a temporary
//!   name, runs `postmap`, checks every key with `postmap -q`, keeps the
//!   previous maps as `*.prev`, renames the new ones into place (the `.db`
//!   first, and `relay_domains` last, or first when domains only go; a
//!   rename is atomic, `postmap` on a live `hash:` file is not),
//!   then `postfix reload`. If a step fails, the previous maps are put back
//!   and the error names the step. At no point is there no map in place. A
//!   map with few changes is built from a copy of its compiled file in
//!   force (`postmap -i -r`, `postmap -d`), checking the keys that changed.
//! - [`Postfix::plan_setup`] / [`Postfix::setup`]: the one-time wiring of
//!   `relay_domains`, `transport_maps` and `relay_recipient_maps` in
//!   main.cf, refusing to make an open relay or to strand the recipients of
//!   the admin's own relay domains.
//! - [`Postfix::local_domains`]: which domains this Postfix delivers itself.
//!
//! Every command gets `-c <postfix_config_dir>`.

pub mod recipients;
pub mod render;
pub mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use mxfed_proto::domain::Domain;

use render::{
    map_text, parse_map, MapDiff, RelayMaps, FRIENDS, RELAY_DOMAINS, RELAY_RECIPIENTS, TLS_POLICY,
    TRANSPORT,
};

/// A map to install: its entries, or its whole text as written.
enum MapSource<'a> {
    Entries(&'a BTreeMap<String, String>),
    Text(&'a str),
}

/// What [`Postfix::apply_changes`] did to each map it changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Maps built whole.
    pub built: Vec<String>,
    /// Maps patched from a copy of their compiled file.
    pub patched: Vec<String>,
    /// Milliseconds to build and check the new maps.
    pub built_ms: u64,
    /// Milliseconds to rename them into place.
    pub installed_ms: u64,
}

/// Name of the directory inside the Postfix config dir that holds our maps.
pub const MAP_DIR: &str = "mxfed";

/// Every map mxfed keeps in [`MAP_DIR`] (what `setup` creates, and what
/// must exist before an apply may skip rewriting unchanged maps).
const MAPS: [&str; 5] = [
    RELAY_DOMAINS,
    RELAY_RECIPIENTS,
    TRANSPORT,
    FRIENDS,
    TLS_POLICY,
];

/// The order to rename `names` into place. A daemon that starts between
/// two renames opens some new maps and some old, and `relay_domains` is
/// the map that makes Postfix accept a domain at all. With a new domain in
/// the new relay_domains and the old transport, it would relay the domain
/// by its MX (back to us), and with the old relay_recipients answer 550 for
/// its recipients: so relay_domains goes last, and a new domain is refused
/// (relay access denied, as before) until every map it needs is in place.
/// When domains only go, relay_domains goes first, for the same reason.
/// (A change that adds some and removes others protects the added.)
fn install_order<'a>(names: &[&'a str], relay_domains: Option<&MapDiff>) -> Vec<&'a str> {
    let first = relay_domains.is_some_and(|c| c.counts.added == 0 && c.counts.removed > 0);
    let mut order = names.to_vec();
    order.sort_by_key(|n| (*n == RELAY_DOMAINS) != first);
    order
}

/// Map types mxfed writes: single-file databases it can rename atomically.
pub const SUPPORTED_MAP_TYPES: &[&str] = &["hash", "btree", "lmdb", "cdb"];

/// Longest any Postfix command may run before it is killed.
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// A Postfix step that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("postfix: {step}: {message}")]
pub struct PostfixError {
    /// The step, e.g. "postmap" or "postfix reload".
    pub step: &'static str,
    /// What went wrong, including the command's own words.
    pub message: String,
}

fn err(step: &'static str, message: impl Into<String>) -> PostfixError {
    PostfixError {
        step,
        message: message.into(),
    }
}

/// One Postfix instance, by its config directory.
#[derive(Debug, Clone)]
pub struct Postfix {
    config_dir: PathBuf,
    /// `queue_directory`, as read at open (Postfix reads it at start too).
    queue_dir: PathBuf,
    map_type: String,
    /// Postfix 3.5 and later take several next hops in one transport entry.
    multiple_next_hops: bool,
    /// What `postconf` printed for each read, while the files it reads are
    /// as they were ([`ConfigStamp`]): a one-domain change needs half a
    /// dozen parameters, and each `postconf` costs a few milliseconds.
    postconf_cache: std::sync::Arc<std::sync::Mutex<PostconfCache>>,
}

/// `postconf` output by its arguments, with the [`ConfigStamp`] it was read at.
type PostconfCache = HashMap<Vec<String>, (ConfigStamp, String)>;

/// A file as [`ConfigStamp`] tells it: device, inode, size, modification
/// and change times (seconds, nanoseconds).
type FileStamp = (u64, u64, u64, i64, i64, i64, i64);

/// What `postconf`'s answers depend on, besides the Postfix build: main.cf
/// and master.cf (device, inode, size, modification and change times; an
/// edit in place or by rename changes one of them), and the host name
/// (`myhostname` and what derives from it default to it). A Postfix
/// upgrade that leaves main.cf alone is seen at the agent's next start;
/// `mynetworks`, whose default follows this machine's addresses, is read
/// afresh ([`Postfix::param_expanded_now`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConfigStamp {
    files: [Option<FileStamp>; 2],
    hostname: Vec<u8>,
}

impl ConfigStamp {
    async fn of(config_dir: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let stat = |name: &str| {
            let path = config_dir.join(name);
            async move {
                tokio::fs::metadata(path).await.ok().map(|m| {
                    (
                        m.dev(),
                        m.ino(),
                        m.size(),
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ctime(),
                        m.ctime_nsec(),
                    )
                })
            }
        };
        let (main, master, hostname) = tokio::join!(
            stat("main.cf"),
            stat("master.cf"),
            tokio::fs::read("/proc/sys/kernel/hostname")
        );
        ConfigStamp {
            files: [main, master],
            hostname: hostname.unwrap_or_default(),
        }
    }
}

/// A planned change to one main.cf parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamChange {
    /// Parameter name.
    pub name: String,
    /// Value now.
    pub old: String,
    /// Value afterwards.
    pub new: String,
}

/// What `postfix setup` would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupPlan {
    /// Parameters to change (empty: already wired).
    pub changes: Vec<ParamChange>,
    /// Map files to create (empty maps) before main.cf refers to them.
    pub create_maps: Vec<PathBuf>,
}

impl Postfix {
    /// Whether `config_dir` holds a Postfix configuration at all.
    pub fn present(config_dir: &Path) -> bool {
        config_dir.join("main.cf").is_file()
    }

    /// A handle for the instance in `config_dir`, using `map_type` or, if
    /// `None`, Postfix's `default_database_type`.
    pub async fn open(config_dir: &Path, map_type: Option<&str>) -> Result<Self, PostfixError> {
        let mut p = Self {
            config_dir: config_dir.into(),
            queue_dir: PathBuf::new(),
            map_type: String::new(),
            multiple_next_hops: false,
            postconf_cache: Default::default(),
        };
        let version = p.param("mail_version").await?;
        p.queue_dir = PathBuf::from(p.param_expanded("queue_directory").await?);
        p.multiple_next_hops = version_at_least(&version, (3, 5));
        if !p.multiple_next_hops {
            tracing::warn!(
                version,
                "Postfix before 3.5 takes one next hop per transport entry: each friend's domain is relayed to the first of its checked addresses only"
            );
        }
        p.map_type = match map_type {
            Some(t) => t.to_string(),
            None => p.param("default_database_type").await?,
        };
        if !SUPPORTED_MAP_TYPES.contains(&p.map_type.as_str()) {
            return Err(err(
                "read postfix config",
                format!(
                    "map type {:?} is not supported; use one of {} (postfix_map_type)",
                    p.map_type,
                    SUPPORTED_MAP_TYPES.join(", ")
                ),
            ));
        }
        Ok(p)
    }

    /// Whether a transport entry may list several next hops (Postfix 3.5+).
    pub fn multiple_next_hops(&self) -> bool {
        self.multiple_next_hops
    }

    /// The map type in use (`hash`, `lmdb`, `cdb`, ...).
    pub fn map_type(&self) -> &str {
        &self.map_type
    }

    /// `<config_dir>/mxfed`.
    pub fn map_dir(&self) -> PathBuf {
        self.config_dir.join(MAP_DIR)
    }

    /// `TYPE:<config_dir>/mxfed/NAME`, as main.cf refers to a map.
    pub fn map_ref(&self, name: &str) -> String {
        format!(
            "{}:{}",
            self.map_kind(name),
            self.map_dir().join(name).display()
        )
    }

    /// The table type of one of mxfed's maps: `cidr` (a text file Postfix
    /// reads itself, no `postmap`) for [`FRIENDS`], else the map type.
    fn map_kind(&self, name: &str) -> &str {
        if name == FRIENDS {
            "cidr"
        } else {
            &self.map_type
        }
    }

    /// The compiled file's suffix for one of mxfed's maps (none for cidr).
    fn suffix_of(&self, name: &str) -> &'static str {
        if name == FRIENDS {
            ""
        } else {
            self.db_suffix()
        }
    }

    fn db_suffix(&self) -> &'static str {
        match self.map_type.as_str() {
            "lmdb" => ".lmdb",
            "cdb" => ".cdb",
            _ => ".db",
        }
    }

    async fn run(
        &self,
        step: &'static str,
        program: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<String, PostfixError> {
        let mut cmd = Command::new(program);
        cmd.arg("-c")
            .arg(&self.config_dir)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| err(step, format!("cannot run {program}: {e}")))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let input = input.to_vec();
            // Feed stdin concurrently so a large output cannot deadlock us.
            tokio::spawn(async move {
                let _ = pipe.write_all(&input).await;
            });
        }
        let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                err(
                    step,
                    format!(
                        "{program} did not finish within {}s",
                        COMMAND_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|e| err(step, format!("{program}: {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            return Err(err(
                step,
                format!(
                    "{program} -c {} {} failed ({}){}{}",
                    self.config_dir.display(),
                    args.join(" "),
                    out.status,
                    if stderr.is_empty() { "" } else { ": " },
                    stderr
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `postconf ARGS` that only reads: its output, from the last run with
    /// the same arguments if main.cf, master.cf and the host name are as
    /// they were then.
    async fn postconf(&self, step: &'static str, args: &[&str]) -> Result<String, PostfixError> {
        let key: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let stamp = ConfigStamp::of(&self.config_dir).await;
        if let Some((at, out)) = crate::util::lock(&self.postconf_cache).get(&key) {
            if *at == stamp {
                return Ok(out.clone());
            }
        }
        let out = self.run(step, "postconf", args, None).await?;
        // (Stamped before the run: an edit during it is seen next time.)
        crate::util::lock(&self.postconf_cache).insert(key, (stamp, out.clone()));
        Ok(out)
    }

    /// [`Postfix::param_expanded`] read afresh, never from the answers
    /// kept: for a parameter whose default follows something besides the
    /// config files (`mynetworks` follows this machine's addresses).
    pub async fn param_expanded_now(&self, name: &str) -> Result<String, PostfixError> {
        Ok(self
            .run("read postfix config", "postconf", &["-xh", name], None)
            .await?
            .trim()
            .to_string())
    }

    /// `postconf -h NAME`: a parameter as written (or its default).
    pub async fn param(&self, name: &str) -> Result<String, PostfixError> {
        Ok(self
            .postconf("read postfix config", &["-h", name])
            .await?
            .trim()
            .to_string())
    }

    /// `postconf -xh NAME`: a parameter with `$names` expanded.
    pub async fn param_expanded(&self, name: &str) -> Result<String, PostfixError> {
        Ok(self
            .postconf("read postfix config", &["-xh", name])
            .await?
            .trim()
            .to_string())
    }

    /// `postconf -x NAME...`: several parameters with `$names` expanded,
    /// by name, in one run.
    pub async fn params_expanded(
        &self,
        names: &[&str],
    ) -> Result<HashMap<String, String>, PostfixError> {
        let mut args = vec!["-x"];
        args.extend_from_slice(names);
        let out = self.postconf("read postfix config", &args).await?;
        let values: HashMap<String, String> = out
            .lines()
            .filter_map(|l| {
                l.split_once(" = ")
                    .or_else(|| l.strip_suffix(" =").map(|n| (n, "")))
            })
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        match names.iter().find(|n| !values.contains_key(**n)) {
            Some(missing) => Err(err(
                "read postfix config",
                format!("postconf did not print {missing}"),
            )),
            None => Ok(values),
        }
    }

    /// One of mxfed's maps in force, as written (empty if none yet).
    pub async fn live_map(&self, name: &str) -> BTreeMap<String, String> {
        parse_map(&self.live_text(name).await)
    }

    /// The text of one of mxfed's maps in force (empty if none yet).
    pub async fn live_text(&self, name: &str) -> String {
        tokio::fs::read_to_string(self.map_dir().join(name))
            .await
            .unwrap_or_default()
    }

    /// How many entries one of mxfed's maps in force has (0 if none yet).
    pub async fn map_entry_count(&self, name: &str) -> usize {
        let path = self.map_dir().join(name);
        tokio::task::spawn_blocking(move || {
            std::fs::read_to_string(path).map_or(0, |t| render::map_lines(&t).count())
        })
        .await
        .unwrap_or(0)
    }

    /// One of mxfed's maps in force patched for a few keys
    /// ([`render::patch_text`]: the keys `owned` says are changing take
    /// their values from `wanted`), read and patched on a blocking thread so
    /// that the maps of one apply are patched side by side. The text must
    /// be there and readable: patched from nothing, a map would lose every
    /// other key.
    pub async fn patched_text(
        &self,
        name: &'static str,
        owned: impl Fn(&str) -> bool + Send + 'static,
        wanted: BTreeMap<String, String>,
    ) -> Result<(String, MapDiff, usize), PostfixError> {
        let path = self.map_dir().join(name);
        tokio::task::spawn_blocking(move || {
            let live = std::fs::read_to_string(&path)
                .map_err(|e| err("read maps in force", format!("{}: {e}", path.display())))?;
            Ok(render::patch_text(&live, owned, &wanted))
        })
        .await
        .map_err(|e| err("read maps in force", e.to_string()))?
    }

    /// Whether the map files exist.
    pub fn maps_exist(&self) -> bool {
        MAPS.iter().all(|n| {
            let p = self.map_dir().join(n);
            p.exists() && PathBuf::from(format!("{}{}", p.display(), self.suffix_of(n))).exists()
        })
    }

    /// Looks keys up in a map: `postmap -q - MAP`, keys on stdin.
    pub async fn query(
        &self,
        map: &str,
        keys: &[String],
    ) -> Result<BTreeMap<String, String>, PostfixError> {
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut input = keys.join("\n");
        input.push('\n');
        Ok(parse_map(&self.lookup(map, &input).await?))
    }

    /// `postmap -q - MAP` with `input` (one key a line) on stdin: a line
    /// `key value` for each key found, in the order asked.
    async fn lookup(&self, map: &str, input: &str) -> Result<String, PostfixError> {
        let out = self
            .run(
                "verify (postmap -q)",
                "postmap",
                &["-q", "-", map],
                Some(input.as_bytes()),
            )
            .await;
        // postmap -q exits 1 when no key is found at all.
        match out {
            Ok(o) => Ok(o),
            // ... but also on a fatal error (a missing or unreadable table):
            // only a quiet exit 1 means "not found", or a local domain would
            // slip through as not local.
            Err(e) if e.message.contains("(exit status: 1)") && !e.message.contains("fatal:") => {
                Ok(String::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Installs `maps` as described in the module docs, knowing what
    /// changed in each map since the maps in force (`changes`, by map
    /// name, from [`render::diff_text`]; none: every map built whole). On
    /// error, the maps in force before are in force again, and the error
    /// names the step. A map
    /// without changes is left as it is, and a map with a few changes (all
    /// listed) is built from a copy of the compiled map in force with
    /// `postmap -i` and `postmap -d`, and only those keys are checked. So a
    /// one-domain change costs the same for a list of 100,000 as for a
    /// list of one. Every other map is built whole and every key checked.
    pub async fn apply_changes(
        &self,
        maps: &RelayMaps,
        changes: &HashMap<&str, MapDiff>,
        reload: bool,
    ) -> Result<Applied, PostfixError> {
        let sources: Vec<(&'static str, MapSource)> = maps
            .maps
            .iter()
            .map(|(n, m)| (*n, MapSource::Entries(m)))
            .collect();
        self.install_maps(&sources, changes, false, reload).await
    }

    /// [`Postfix::apply_changes`] for maps given as their whole new text
    /// (as [`render::patch_text`] makes it from the text in force), each
    /// with what changes in it. With `whole`, every map is built whole
    /// even if unchanged, and the changes only set the order the maps are
    /// renamed in ([`install_order`]).
    pub async fn apply_texts(
        &self,
        maps: &[(&'static str, String)],
        changes: &HashMap<&str, MapDiff>,
        whole: bool,
        reload: bool,
    ) -> Result<Applied, PostfixError> {
        let sources: Vec<(&'static str, MapSource)> =
            maps.iter().map(|(n, t)| (*n, MapSource::Text(t))).collect();
        self.install_maps(&sources, changes, whole, reload).await
    }

    async fn install_maps(
        &self,
        maps: &[(&'static str, MapSource<'_>)],
        changes: &HashMap<&str, MapDiff>,
        whole: bool,
        reload: bool,
    ) -> Result<Applied, PostfixError> {
        let started = std::time::Instant::now();
        let dir = self.map_dir();
        ensure_dir(&dir).await?;
        cleanup_temp(&dir).await;
        // 1. Build every new map beside the live one and check it. On a
        // failure (a full disk, say) nothing half built is left behind.
        let none = HashMap::new();
        let (touched, patched) = match self.build(maps, if whole { &none } else { changes }).await {
            Ok(t) => t,
            Err(e) => {
                cleanup_temp(&dir).await;
                return Err(e);
            }
        };
        let built_ms = started.elapsed().as_millis() as u64;
        // 2. Keep what is live now, then rename the new maps into place.
        for name in &touched {
            for s in [self.suffix_of(name), ""] {
                let live = dir.join(format!("{name}{s}"));
                let prev = dir.join(format!("{name}{s}.prev"));
                let _ = tokio::fs::remove_file(&prev).await;
                if live.exists() {
                    if let Err(e) = tokio::fs::hard_link(&live, &prev).await {
                        cleanup_temp(&dir).await;
                        return Err(err("install maps", format!("keep {}: {e}", live.display())));
                    }
                }
            }
        }
        // relay_domains is the gate: renamed last when domains come in,
        // first when they only go (and the other way round to roll back).
        let order = install_order(&touched, changes.get(RELAY_DOMAINS));
        let mut undo = order.clone();
        undo.reverse();
        if let Err(e) = self.install(&order, "new").await {
            return Err(self.roll_back(&undo, e, reload).await);
        }
        let installed_ms = started.elapsed().as_millis() as u64 - built_ms;
        // 3. Make Postfix use them now.
        if reload {
            if let Err(e) = self.reload().await {
                return Err(self.roll_back(&undo, e, reload).await);
            }
        }
        Ok(Applied {
            built: touched
                .iter()
                .filter(|n| !patched.contains(n))
                .map(|n| n.to_string())
                .collect(),
            patched: patched.iter().map(|n| n.to_string()).collect(),
            built_ms,
            installed_ms,
        })
    }

    /// Step 1 of [`Postfix::apply_changes`]: builds `NAME.new` (and its
    /// compiled file) for each map that changes, checks it, and returns
    /// the names of those maps, and of those among them patched.
    async fn build(
        &self,
        maps: &[(&'static str, MapSource<'_>)],
        changes: &HashMap<&str, MapDiff>,
    ) -> Result<(Vec<&'static str>, Vec<&'static str>), PostfixError> {
        let dir = self.map_dir();
        let mut touched: Vec<&str> = Vec::new();
        let mut small: Vec<(&'static str, &MapSource, &MapDiff)> = Vec::new();
        let mut whole: Vec<(&'static str, &MapSource)> = Vec::new();
        for (name, source) in maps {
            let live = dir.join(name);
            let live_db = dir.join(format!("{name}{}", self.suffix_of(name)));
            let in_force = live.exists() && live_db.exists();
            let change = changes.get(name);
            if in_force && change.is_some_and(MapDiff::is_empty) {
                continue;
            }
            touched.push(name);
            let patchable = change.filter(|c| {
                in_force && c.is_complete() && *name != FRIENDS && self.map_type != "cdb"
            });
            match patchable {
                Some(change) => small.push((name, source, change)),
                None => whole.push((name, source)),
            }
        }
        // The patches side by side: each is a copy of a compiled map and a
        // few `postmap` runs, and a one-domain change waits for the slowest
        // instead of their sum. A map whose patch fails is built whole.
        let dir = &dir;
        let patches = small.iter().map(|(name, source, change)| async move {
            self.write_source(name, source).await?;
            let map = format!(
                "{}:{}",
                self.map_kind(name),
                dir.join(format!("{name}.new")).display()
            );
            let live_db = dir.join(format!("{name}{}", self.suffix_of(name)));
            let new_db = dir.join(format!("{name}.new{}", self.suffix_of(name)));
            let patched = self.patch(&live_db, &new_db, &map, change).await;
            if let Err(e) = &patched {
                tracing::warn!(
                    "{name}: patching a copy of the map in force failed ({e}); building it whole"
                );
                let _ = tokio::fs::remove_file(&new_db).await;
            }
            Ok::<bool, PostfixError>(patched.is_ok())
        });
        let mut patched: Vec<&str> = Vec::new();
        for ((name, source, _), done) in small
            .iter()
            .zip(futures_util::future::join_all(patches).await)
        {
            match done? {
                true => patched.push(name),
                false => whole.push((name, source)),
            }
        }
        // Whole builds one at a time: each holds a whole map.
        for (name, source) in whole {
            self.write_source(name, source).await?;
            let map = format!(
                "{}:{}",
                self.map_kind(name),
                dir.join(format!("{name}.new")).display()
            );
            if name != FRIENDS {
                self.run("postmap", "postmap", &[&map], None).await?;
            }
            match source {
                MapSource::Entries(entries) => {
                    self.verify(&map, entries.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .await?
                }
                MapSource::Text(text) => self.verify(&map, render::map_lines(text)).await?,
            }
        }
        Ok((touched, patched))
    }

    /// Writes `NAME.new`, the source of a map to build.
    async fn write_source(&self, name: &str, source: &MapSource<'_>) -> Result<(), PostfixError> {
        let new = self.map_dir().join(format!("{name}.new"));
        match source {
            MapSource::Entries(entries) => write_file(&new, map_text(entries).as_bytes()).await,
            MapSource::Text(text) => write_file(&new, text.as_bytes()).await,
        }
    }

    /// Makes `new_db` a copy of `live_db` with `change` made to it
    /// (`postmap -i`, `postmap -d`), and checks the keys it changed.
    async fn patch(
        &self,
        live_db: &Path,
        new_db: &Path,
        map: &str,
        change: &MapDiff,
    ) -> Result<(), PostfixError> {
        tokio::fs::copy(live_db, new_db).await.map_err(|e| {
            err(
                "postmap",
                format!("copy {} to {}: {e}", live_db.display(), new_db.display()),
            )
        })?;
        let mut put = String::new();
        for (k, v) in &change.added {
            put.push_str(&format!("{k} {v}\n"));
        }
        for (k, _, v) in &change.changed {
            put.push_str(&format!("{k} {v}\n"));
        }
        if !put.is_empty() {
            // -r: a key already there takes the new value (without it,
            // postmap keeps the old one and only warns).
            self.run(
                "postmap",
                "postmap",
                &["-i", "-r", map],
                Some(put.as_bytes()),
            )
            .await?;
        }
        let gone: Vec<String> = change.removed.iter().map(|(k, _)| k.clone()).collect();
        if !gone.is_empty() {
            let mut keys = gone.join("\n");
            keys.push('\n');
            self.run(
                "postmap",
                "postmap",
                &["-d", "-", map],
                Some(keys.as_bytes()),
            )
            .await?;
        }
        let wanted = change
            .added
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(
                change
                    .changed
                    .iter()
                    .map(|(k, _, v)| (k.as_str(), v.as_str())),
            );
        self.verify(map, wanted).await?;
        let left = self.query(map, &gone).await?;
        if let Some(k) = left.keys().next() {
            return Err(err(
                "verify (postmap -q)",
                format!("{map} still answers for {k}, which was removed"),
            ));
        }
        Ok(())
    }

    /// Checks that `map` answers each of `entries` (key, value) as given,
    /// walking `postmap -q -` output beside them instead of making a map
    /// of it.
    async fn verify<'a>(
        &self,
        map: &str,
        entries: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Result<(), PostfixError> {
        let mut input = String::new();
        let mut wanted = 0usize;
        for (k, _) in entries.clone() {
            input.push_str(k);
            input.push('\n');
            wanted += 1;
        }
        if wanted == 0 {
            return Ok(());
        }
        let out = self.lookup(map, &input).await?;
        drop(input);
        // One line per key found, in the order asked.
        let mut found = render::map_lines(&out);
        let mut next = found.next();
        for (k, v) in entries {
            match next {
                Some((fk, fv)) if fk == k => {
                    if fv != v {
                        return Err(err(
                            "verify (postmap -q)",
                            format!("{map} does not answer as written (first difference: {k})"),
                        ));
                    }
                    next = found.next();
                }
                _ => {
                    return Err(err(
                        "verify (postmap -q)",
                        format!("{map} does not answer as written (first difference: {k} missing)"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Renames `NAME.<from>{suffix}` and `NAME.<from>` over the live files,
    /// db first, in the order given ([`install_order`]).
    async fn install(&self, names: &[&str], from: &str) -> Result<(), PostfixError> {
        let dir = self.map_dir();
        for name in names {
            let suffix = self.suffix_of(name);
            for (src, dst) in [
                (format!("{name}.{from}{suffix}"), format!("{name}{suffix}")),
                (format!("{name}.{from}"), name.to_string()),
            ] {
                let (src, dst) = (dir.join(src), dir.join(dst));
                if src.exists() {
                    tokio::fs::rename(&src, &dst).await.map_err(|e| {
                        err(
                            "install maps",
                            format!("rename {} to {}: {e}", src.display(), dst.display()),
                        )
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Puts the `*.prev` maps back (best effort) and reloads. Returns
    /// `failure`, with what went wrong in rolling back added to its message
    /// (so `mxfed history` shows it, not only the log).
    async fn roll_back(
        &self,
        names: &[&str],
        mut failure: PostfixError,
        reload: bool,
    ) -> PostfixError {
        let dir = self.map_dir();
        let mut problems = Vec::new();
        for name in names {
            for s in [self.suffix_of(name), ""] {
                let prev = dir.join(format!("{name}{s}.prev"));
                let live = dir.join(format!("{name}{s}"));
                if prev.exists() {
                    if let Err(e) = tokio::fs::rename(&prev, &live).await {
                        tracing::error!("roll back {}: {e}", live.display());
                        problems.push(format!("restore {}: {e}", live.display()));
                    }
                }
            }
        }
        cleanup_temp(&dir).await;
        // (Not asked to reload, as for a stopped Postfix: nothing to undo.)
        if let Err(e) = match reload {
            true => self.reload().await,
            false => Ok(()),
        } {
            tracing::warn!("after rolling back the maps: {e}");
            // A reload that failed the first time is expected to fail again.
            if failure.step != "postfix reload" {
                problems.push(format!("reload after rolling back: {e}"));
            }
        }
        if !problems.is_empty() {
            failure.message = format!(
                "{}; rolling back also failed ({}); check the maps in {}",
                failure.message,
                problems.join("; "),
                dir.display()
            );
        }
        failure
    }

    /// `postfix reload`.
    pub async fn reload(&self) -> Result<(), PostfixError> {
        self.run("postfix reload", "postfix", &["reload"], None)
            .await
            .map(|_| ())
    }

    /// What `postfix setup` would change. Fails if wiring would make an open relay.
    pub async fn plan_setup(
        &self,
        trust_friends: bool,
        policy: &PolicyAddr,
    ) -> Result<SetupPlan, PostfixError> {
        let relay_restrictions = self.param("smtpd_relay_restrictions").await?;
        let recipient_restrictions = self.param("smtpd_recipient_restrictions").await?;
        // Debian's stock main.cf has `defer_unauth_destination`, which
        // refuses the same mail with a 4xx instead of a 5xx.
        let guarded = |value: &str| {
            has_word(value, "reject_unauth_destination")
                || has_word(value, "defer_unauth_destination")
        };
        if !guarded(&relay_restrictions) && !guarded(&recipient_restrictions) {
            return Err(err(
                "check relay restrictions",
                "neither smtpd_relay_restrictions nor smtpd_recipient_restrictions contains reject_unauth_destination (or defer_unauth_destination); adding relay domains now would make an open relay, so nothing was changed",
            ));
        }
        let mut changes = Vec::new();
        let mut wanted = vec![
            ("relay_domains", RELAY_DOMAINS),
            ("transport_maps", TRANSPORT),
        ];
        // relay_domains matches subdomains too (parent_domain_matches_subdomains),
        // so a friend's entry would also relay x@sub.friend.example, routed by
        // DNS the friend controls. relay_recipient_maps holds friends to their
        // exact domains (our map has `@domain` keys, which Postfix matches
        // exactly: "User unknown in relay recipient table" for the rest). Where
        // it is empty (Debian's default) every relay domain accepts every
        // recipient, so setting it is safe only if no other relay domain
        // relies on that.
        // The check also runs where relay_recipient_maps holds only our map
        // (a relay domain the admin adds later would lose its recipients;
        // `mxfed doctor` then says so).
        let recipient_maps = self.param("relay_recipient_maps").await?;
        let ours_only = list_tokens(&recipient_maps).into_iter().all(|t| {
            let recipients = self.map_dir().join(RELAY_RECIPIENTS).display().to_string();
            t.split_once(':')
                .is_some_and(|(_, path)| path == recipients)
        });
        if ours_only {
            // Expanded: the default is an expression (`$mydestination` below
            // compatibility level 2, else empty). Domains that are also in
            // mydestination are local, and relay_recipient_maps does not
            // apply to them.
            let relay_domains = self.param_expanded("relay_domains").await?;
            let mydestination = self.param_expanded("mydestination").await?;
            let local = list_tokens(&mydestination);
            let ours = self.map_dir().join(RELAY_DOMAINS).display().to_string();
            let others: Vec<&str> = list_tokens(&relay_domains)
                .into_iter()
                .filter(|t| t.split_once(':').is_none_or(|(_, path)| path != ours))
                .filter(|t| !local.contains(t))
                .collect();
            if !others.is_empty() {
                return Err(err(
                    "check relay recipients",
                    format!(
                        "relay_recipient_maps {}, so mxfed must hold friends to their exact domains with it alone, but that would reject every recipient of your own relay domains ({}). List their valid recipients (or `@domain OK` for each) in a table of your own, e.g. `postconf -e 'relay_recipient_maps = hash:/etc/postfix/relay_recipients'` and `postmap /etc/postfix/relay_recipients`, then run `mxfed postfix setup` again",
                        if recipient_maps.trim().is_empty() {
                            "is empty (Postfix accepts every recipient of every relay domain and of its subdomains)"
                        } else {
                            "names only mxfed's map"
                        },
                        others.join(", ")
                    ),
                ));
            }
        }
        wanted.push(("relay_recipient_maps", RELAY_RECIPIENTS));
        wanted.push(("smtp_tls_policy_maps", TLS_POLICY));
        if trust_friends {
            // postscreen lets friends' mail hosts straight through (their
            // relayed mail is not theirs to be judged by).
            wanted.push(("postscreen_access_list", FRIENDS));
        }
        for (param, map) in &wanted {
            let old = self.param(param).await?;
            let path = self.map_dir().join(map).display().to_string();
            let ours = self.map_ref(map);
            let tokens = list_tokens(&old);
            if tokens.contains(&ours.as_str()) {
                continue; // already wired, with this map type
            }
            let stale = tokens
                .iter()
                .any(|t| t.split_once(':').is_some_and(|(_, p)| p == path));
            let base = if stale {
                // Wired with another map type: drop that reference. (Only
                // then is the value re-joined; otherwise it is kept verbatim,
                // since it may be an expression like Postfix's default.)
                tokens
                    .into_iter()
                    .filter(|t| t.split_once(':').is_none_or(|(_, p)| p != path))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                old.trim().to_string()
            };
            let new = if base.is_empty() {
                ours
            } else if *param == "transport_maps" || *param == "smtp_tls_policy_maps" {
                // First, so an admin's wildcard or `.parent` transport entry
                // cannot send a friend's mail elsewhere. (Ours holds exact
                // domains only, so it shadows nothing of the admin's.)
                format!("{ours}, {base}")
            } else {
                format!("{base}, {ours}")
            };
            changes.push(ParamChange {
                name: param.to_string(),
                old,
                new,
            });
        }
        // The policy service for friends in `when-down` mode: first (it
        // never permits, only defers a friend's mail while its own server
        // takes it), and DUNNO if the agent does not answer, so Postfix
        // never refuses mail because mxfed is down.
        let restrictions = self.param("smtpd_recipient_restrictions").await?;
        let service = match policy {
            PolicyAddr::Tcp(addr) => format!("inet:{addr}"),
            // Relative to queue_directory where it is inside (smtpd may
            // run chrooted there), as Postfix's own `private/...` services.
            PolicyAddr::Unix(path) => {
                let queue = PathBuf::from(self.param_expanded("queue_directory").await?);
                match path.strip_prefix(&queue) {
                    Ok(rel) => format!("unix:{}", rel.display()),
                    Err(_) => format!("unix:{}", path.display()),
                }
            }
        };
        if let Some(new) = wire_policy(&restrictions, &service) {
            changes.push(ParamChange {
                name: "smtpd_recipient_restrictions".into(),
                old: restrictions.clone(),
                new,
            });
        }
        // Friends' keys are pinned as SHA-256 fingerprints; below
        // compatibility_level 3.6 Postfix compares MD5 ones.
        let digest = self.param_expanded("smtp_tls_fingerprint_digest").await?;
        if !digest.eq_ignore_ascii_case("sha256") {
            changes.push(ParamChange {
                name: "smtp_tls_fingerprint_digest".into(),
                old: digest,
                new: "sha256".into(),
            });
        }
        let create_maps = if self.maps_exist() {
            Vec::new()
        } else {
            MAPS.iter().map(|n| self.map_dir().join(n)).collect()
        };
        Ok(SetupPlan {
            changes,
            create_maps,
        })
    }

    /// Carries out a [`SetupPlan`]: creates empty maps if missing (so main.cf
    /// never names a map that does not exist), edits main.cf with
    /// `postconf -e`, then reloads Postfix if it is running.
    pub async fn setup(&self, plan: &SetupPlan) -> Result<(), PostfixError> {
        // Create only the maps that are missing; existing ones (and the
        // agent's work in progress) are never touched here.
        if !plan.create_maps.is_empty() {
            ensure_dir(&self.map_dir()).await?;
            let empty = render::render_maps(&[])
                .with_friends(&[])
                .with_tls(BTreeMap::new());
            for (name, entries) in empty.maps {
                let path = self.map_dir().join(name);
                let db = PathBuf::from(format!("{}{}", path.display(), self.suffix_of(name)));
                if !path.exists() {
                    write_file(&path, map_text(&entries).as_bytes()).await?;
                }
                if name != FRIENDS && !db.exists() {
                    let map = format!("{}:{}", self.map_type, path.display());
                    self.run("postmap", "postmap", &[&map], None).await?;
                }
            }
        }
        for c in &plan.changes {
            let assignment = format!("{} = {}", c.name, c.new);
            self.run(
                "edit main.cf (postconf -e)",
                "postconf",
                &["-e", &assignment],
                None,
            )
            .await?;
        }
        if !plan.changes.is_empty() && self.is_running().await {
            self.reload().await?;
        }
        Ok(())
    }

    /// Streams `postqueue -j` into `line` one line at a time. Fails (so the
    /// depth is unknown, never zero) if Postfix is not running.
    pub async fn read_queue(&self, mut line: impl FnMut(&str)) -> Result<(), PostfixError> {
        use tokio::io::AsyncBufReadExt;
        let step = "read queue (postqueue -j)";
        let mut child = Command::new("postqueue")
            .arg("-c")
            .arg(&self.config_dir)
            .arg("-j")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| err(step, format!("cannot run postqueue: {e}")))?;
        let stdout = child.stdout.take().ok_or_else(|| err(step, "no stdout"))?;
        // Drain stderr as we go (a full pipe would stall postqueue), keeping
        // only the first few KiB for the error message.
        let mut stderr = child.stderr.take().ok_or_else(|| err(step, "no stderr"))?;
        let errors = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if kept.len() < 4096 {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            String::from_utf8_lossy(&kept).trim().to_string()
        });
        let read = async {
            let mut lines = tokio::io::BufReader::with_capacity(1 << 16, stdout).lines();
            while let Some(l) = lines
                .next_line()
                .await
                .map_err(|e| err(step, e.to_string()))?
            {
                line(&l);
            }
            child.wait().await.map_err(|e| err(step, e.to_string()))
        };
        let status = tokio::time::timeout(COMMAND_TIMEOUT, read)
            .await
            .map_err(|_| {
                err(
                    step,
                    format!(
                        "postqueue did not finish within {}s",
                        COMMAND_TIMEOUT.as_secs()
                    ),
                )
            })??;
        if !status.success() {
            return Err(err(
                step,
                format!(
                    "postqueue -c {} -j failed ({status}): {}",
                    self.config_dir.display(),
                    errors.await.unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    /// `postqueue -s DOMAIN`: deliver the mail queued for one destination now.
    pub async fn flush_domain(&self, domain: &Domain) -> Result<(), PostfixError> {
        self.run(
            "flush (postqueue -s)",
            "postqueue",
            &["-s", domain.as_str()],
            None,
        )
        .await
        .map(|_| ())
    }

    /// Whether the Postfix master is running (`postfix status`).
    pub async fn is_running(&self) -> bool {
        self.run("postfix status", "postfix", &["status"], None)
            .await
            .is_ok()
    }

    /// Whether the Postfix master is running, cheaply enough to ask several
    /// times a second: the process named in `pid/master.pid` under the
    /// queue directory is Postfix's `master` and alive (no command is run).
    /// The master binds the SMTP listeners as it starts, so this is also
    /// whether connections are taken.
    pub async fn master_running(&self) -> bool {
        self.master().await.is_some()
    }

    /// [`Postfix::master_running`], naming the running master: its process
    /// ID and start time, which differ after a restart.
    pub async fn master(&self) -> Option<u64> {
        let pid_file = self.queue_dir.join("pid/master.pid");
        let text = tokio::fs::read_to_string(&pid_file).await.ok()?;
        let pid = text.trim().parse::<u32>().ok()?;
        // `PID (COMM) STATE ...`; a master that exited but was not reaped
        // yet (a zombie, where PID 1 reaps slowly) is not running.
        let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
            .await
            .ok()?;
        let (head, tail) = stat.rsplit_once(')')?;
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        let fields: Vec<&str> = tail.split_whitespace().collect();
        let state = fields.first().copied().unwrap_or("");
        // Field 22 of stat, the 20th after the name: start time in ticks.
        let started: u64 = fields.get(19).and_then(|f| f.parse().ok()).unwrap_or(0);
        (comm == "master" && !matches!(state, "Z" | "X" | "x"))
            .then_some((u64::from(pid) << 40) ^ started)
    }

    /// Where this Postfix takes mail by SMTP: every `inet` service of
    /// master.cf run by `smtpd` or `postscreen`, at its own `host:` or on
    /// each of `inet_interfaces` (`all`: every address of this machine's
    /// interfaces), plus `proxy_interfaces` (addresses a proxy or NAT
    /// forwards here), which count at every port. A next hop at any of these
    /// would send a friend's mail back to me.
    pub async fn smtp_listeners(&self) -> Result<Listeners, PostfixError> {
        let services = self.postconf("read master.cf", &["-M"]).await?;
        let values = self
            .params_expanded(&["inet_interfaces", "proxy_interfaces"])
            .await?;
        let interfaces = values.get("inet_interfaces").cloned().unwrap_or_default();
        let proxies = values.get("proxy_interfaces").cloned().unwrap_or_default();
        let etc_services = tokio::fs::read_to_string("/etc/services")
            .await
            .unwrap_or_default();
        let failed = |why: String| err("read this server's addresses", why);
        let mut listen = Vec::new();
        let mut everywhere: Option<Vec<IpAddr>> = None;
        for (host, port) in services.lines().filter_map(smtp_service) {
            let Some(port) = service_port(port, &etc_services) else {
                return Err(failed(format!(
                    "master.cf names a service port {port:?} that is neither a number nor in /etc/services"
                )));
            };
            let hosts = match host {
                Some(h) => interface_addrs(&[h]).await.map_err(failed)?,
                None => match &everywhere {
                    Some(all) => all.clone(),
                    None => {
                        let all = interface_addrs(&list_tokens(&interfaces))
                            .await
                            .map_err(failed)?;
                        everywhere = Some(all.clone());
                        all
                    }
                },
            };
            listen.extend(hosts.into_iter().map(|ip| SocketAddr::new(ip, port)));
        }
        listen.sort();
        listen.dedup();
        let any_port = interface_addrs(&list_tokens(&proxies))
            .await
            .map_err(failed)?;
        Ok(Listeners { listen, any_port })
    }

    /// Which of `candidates` this Postfix delivers itself or relays outside
    /// mxfed: in `mydestination`, `virtual_alias_domains`,
    /// `virtual_mailbox_domains`, or `relay_domains` (less our own map),
    /// including `.parent` items and, where `parent_domain_matches_subdomains`
    /// names the parameter, parent domains.
    pub async fn local_domains(
        &self,
        candidates: &[Domain],
    ) -> Result<HashSet<Domain>, PostfixError> {
        const LISTS: [&str; 4] = [
            "mydestination",
            "virtual_alias_domains",
            "virtual_mailbox_domains",
            "relay_domains",
        ];
        // One postconf for all of them.
        let mut names = vec!["parent_domain_matches_subdomains"];
        names.extend(LISTS);
        let values = self.params_expanded(&names).await?;
        let value = |n: &str| values.get(n).map_or("", String::as_str);
        let parent_params = value("parent_domain_matches_subdomains");
        let mut local = HashSet::new();
        for param in LISTS {
            let parent = has_word(parent_params, param);
            local.extend(
                self.domain_list_matches(value(param), parent, candidates)
                    .await?,
            );
        }
        Ok(local)
    }

    /// Which of `candidates` a domain list parameter's `value` (expanded)
    /// covers, read as Postfix reads it (names, files, tables, `.parent`
    /// items, and parent domains if `parent`); mxfed's own relay map is
    /// left out.
    async fn domain_list_matches(
        &self,
        value: &str,
        parent: bool,
        candidates: &[Domain],
    ) -> Result<HashSet<Domain>, PostfixError> {
        let ours = self.map_dir().display().to_string();
        let mut keys: Vec<String> = candidates
            .iter()
            .flat_map(|d| lookup_keys(d.as_str()))
            .collect();
        keys.sort();
        keys.dedup();
        let mut found = HashSet::new();
        let mut matching = |item: &str| {
            let item = item.trim().to_ascii_lowercase();
            for d in candidates {
                if list_matches(d.as_str(), &item, parent) {
                    found.insert(d.clone());
                }
            }
        };
        for token in list_tokens(value) {
            if token.starts_with('/') {
                // A file of list items.
                if let Ok(text) = tokio::fs::read_to_string(token).await {
                    for item in text.split_whitespace().filter(|w| !w.starts_with('#')) {
                        matching(item);
                    }
                }
            } else if let Some((_, path)) = token.split_once(':') {
                if path.starts_with(&ours) {
                    continue; // our own relay map
                }
                for (k, _) in self.query(token, &keys).await? {
                    matching(&k);
                }
            } else {
                matching(token);
            }
        }
        Ok(found)
    }
}

/// Where the agent serves Postfix's policy requests (`policy_listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyAddr {
    /// A Unix socket (`unix:PATH`).
    Unix(PathBuf),
    /// A loopback TCP address.
    Tcp(SocketAddr),
}

/// Postfix policy requests are served here unless the config says otherwise.
pub const DEFAULT_POLICY_SOCKET: &str = "/var/spool/postfix/private/mxfed-policy";

impl Default for PolicyAddr {
    fn default() -> Self {
        PolicyAddr::Unix(DEFAULT_POLICY_SOCKET.into())
    }
}

impl std::fmt::Display for PolicyAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            PolicyAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl Serialize for PolicyAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PolicyAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // The address goes into main.cf inside `{ ... }`: nothing there
        // may end the item or be expanded.
        if let Some(path) = s.strip_prefix("unix:") {
            let plain = |c: char| c.is_ascii_graphic() && !",{}$#=".contains(c);
            if path.starts_with('/') && path.chars().all(plain) {
                return Ok(PolicyAddr::Unix(path.into()));
            }
        } else if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.ip().is_loopback() && addr.port() != 0 {
                return Ok(PolicyAddr::Tcp(addr));
            }
        }
        Err(serde::de::Error::custom(format!(
            "{s:?}: policy_listen is \"unix:/absolute/path\" (no spaces or any of , {{ }} $ # =) or a loopback \"IP:PORT\""
        )))
    }
}

/// Where this Postfix takes mail by SMTP ([`Postfix::smtp_listeners`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listeners {
    /// Address and port of each SMTP listener.
    pub listen: Vec<SocketAddr>,
    /// Addresses that reach this server at any port (`proxy_interfaces`).
    pub any_port: Vec<IpAddr>,
}

/// The service name, type and command of a `postconf -M` line (`None` for
/// a line with fewer than master.cf's 8 fields).
fn master_entry(line: &str) -> Option<(&str, &str, &str)> {
    let mut fields = line.split_whitespace();
    let (name, kind) = (fields.next()?, fields.next()?);
    let command = fields.nth(5)?;
    Some((name, kind, command))
}

/// The host (if the service names one) and port (as written) of a
/// `postconf -M` line for an SMTP server: an `inet` service run by `smtpd`
/// or `postscreen`.
fn smtp_service(line: &str) -> Option<(Option<&str>, &str)> {
    let (service, kind, command) = master_entry(line)?;
    if kind != "inet" || !matches!(command, "smtpd" | "postscreen") {
        return None;
    }
    let (host, port) = match service.rsplit_once(':') {
        Some((host, port)) => (Some(host), port),
        None => (None, service),
    };
    Some((host, port))
}

/// The TCP port a master.cf service names: a number, or a name from
/// `services` (the text of /etc/services), with the SMTP names Postfix's
/// own master.cf uses known even without it.
fn service_port(name: &str, services: &str) -> Option<u16> {
    if let Ok(port) = name.parse() {
        return Some(port);
    }
    let listed = services.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let (service, port) = (words.next()?, words.next()?);
        let (port, proto) = port.split_once('/')?;
        (proto == "tcp" && (service == name || words.any(|alias| alias == name)))
            .then(|| port.parse().ok())
            .flatten()
    });
    listed.or(match name {
        "smtp" => Some(25),
        "submission" => Some(587),
        "smtps" | "submissions" => Some(465),
        _ => None,
    })
}

/// The addresses a Postfix interface list (`inet_interfaces`,
/// `proxy_interfaces`, a service's `host:`) stands for. `all` (and the
/// wildcards `0.0.0.0` and `::`, which Postfix binds as every address) is
/// every address of this machine's interfaces; a host name is resolved
/// (one that does not resolve is left out, as Postfix would fail to bind
/// it). `Err` if the interfaces cannot be listed: then this server's
/// addresses are not known.
async fn interface_addrs(items: &[&str]) -> Result<Vec<IpAddr>, String> {
    let mut addrs = Vec::new();
    for item in items {
        let item = item.trim_start_matches('[').trim_end_matches(']');
        let every = |v4: bool, v6: bool| -> Result<Vec<IpAddr>, String> {
            let found = if_addrs::get_if_addrs()
                .map_err(|e| format!("cannot list this machine's interfaces: {e}"))?;
            Ok(found
                .iter()
                .map(|i| i.ip())
                .filter(|ip| (v4 && ip.is_ipv4()) || (v6 && ip.is_ipv6()))
                .collect())
        };
        match item {
            "" => {}
            "all" | "::" => addrs.extend(every(true, true)?),
            "0.0.0.0" => addrs.extend(every(true, false)?),
            "loopback-only" => addrs.extend([
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]),
            _ => match item.parse::<IpAddr>() {
                Ok(ip) => addrs.push(ip),
                Err(_) => {
                    if let Ok(found) = tokio::net::lookup_host((item, 0)).await {
                        addrs.extend(found.map(|a| a.ip()));
                    }
                }
            },
        }
    }
    for a in &mut addrs {
        *a = a.to_canonical();
    }
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Whether the domain-list item `item` (lower case) covers `domain`: the
/// same name; `.parent` covers its subdomains; with `parent` (the list is in
/// `parent_domain_matches_subdomains`), `parent` covers them too.
fn list_matches(domain: &str, item: &str, parent: bool) -> bool {
    if item.starts_with('.') {
        return domain.ends_with(item);
    }
    domain == item
        || (parent
            && domain.len() > item.len()
            && domain.ends_with(item)
            && domain.as_bytes()[domain.len() - item.len() - 1] == b'.')
}

/// The keys a table in a domain list is looked up with for `domain`: the
/// domain, then each parent domain as `parent` and `.parent`.
fn lookup_keys(domain: &str) -> Vec<String> {
    let mut keys = vec![domain.to_string()];
    let mut rest = domain;
    while let Some((_, parent)) = rest.split_once('.') {
        keys.push(parent.to_string());
        keys.push(format!(".{parent}"));
        rest = parent;
    }
    keys
}

/// Whether a `mail_version` such as `3.7.11` is at least `(major, minor)`.
fn version_at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = version.trim().split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .unwrap_or(0)
    });
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

fn has_word(list: &str, word: &str) -> bool {
    list_tokens(list).contains(&word)
}

/// The items of a Postfix list parameter: separated by commas and white
/// space, except inside `{...}`, so `inline:{ a.example=x, b.example=y }`
/// stays one map reference.
/// The policy service address of mxfed versions before the Unix socket.
const OLD_POLICY_SERVICE: &str = "inet:127.0.0.1:10045";

/// `smtpd_recipient_restrictions` with mxfed's policy service wired first
/// in exactly its one safe form, or `None` if it already is. Any other
/// `check_policy_service` naming `service` (or mxfed's old default address)
/// is taken out: one without `default_action=DUNNO` would make Postfix
/// answer 451 whenever the agent is down, and a stale address costs each
/// RCPT a failed connect.
fn wire_policy(restrictions: &str, service: &str) -> Option<String> {
    // One quick try (not Postfix's two, a second apart, nor its 100 s
    // wait), so a stopped or hung agent costs each RCPT little.
    let ours = format!(
        "check_policy_service {{ {service}, default_action=DUNNO, try_limit=1, timeout=10s }}"
    );
    let tokens = list_tokens(restrictions);
    let mut items: Vec<String> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == "check_policy_service" && i + 1 < tokens.len() {
            items.push(format!("{} {}", tokens[i], tokens[i + 1]));
            i += 2;
        } else {
            items.push(tokens[i].to_string());
            i += 1;
        }
    }
    let is_ours = |item: &str| {
        let Some(arg) = item.strip_prefix("check_policy_service ") else {
            return false;
        };
        let arg = arg.trim().trim_start_matches('{').trim_end_matches('}');
        let addr = arg.split(',').next().unwrap_or("").trim();
        addr == service || addr == OLD_POLICY_SERVICE
    };
    let squeeze = |t: &str| t.split_whitespace().collect::<String>();
    let wired: Vec<&String> = items.iter().filter(|t| is_ours(t)).collect();
    if wired.len() == 1 && items.first().is_some_and(|f| squeeze(f) == squeeze(&ours)) {
        return None;
    }
    let rest: Vec<String> = items.into_iter().filter(|t| !is_ours(t)).collect();
    Some(
        std::iter::once(ours)
            .chain(rest)
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn list_tokens(value: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let (mut depth, mut start) = (0usize, None);
    for (i, c) in value.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' | ' ' | '\t' | '\n' | '\r' if depth == 0 => {
                if let Some(s) = start.take() {
                    tokens.push(&value[s..i]);
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(i);
    }
    if let Some(s) = start {
        tokens.push(&value[s..]);
    }
    tokens
}

async fn ensure_dir(dir: &Path) -> Result<(), PostfixError> {
    if !dir.exists() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| err("write map source", format!("create {}: {e}", dir.display())))?;
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(|e| err("write map source", format!("chmod {}: {e}", dir.display())))?;
    }
    Ok(())
}

async fn write_file(path: &Path, data: &[u8]) -> Result<(), PostfixError> {
    let io = |e: std::io::Error| err("write map source", format!("{}: {e}", path.display()));
    let mut f = tokio::fs::File::create(path).await.map_err(io)?;
    f.write_all(data).await.map_err(io)?;
    f.sync_all().await.map_err(io)?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .await
        .map_err(io)
}

/// Removes `*.new*` files a previous, interrupted apply left behind.
async fn cleanup_temp(dir: &Path) {
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        if e.file_name().to_string_lossy().contains(".new") {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        has_word, install_order, interface_addrs, list_matches, list_tokens, lookup_keys,
        service_port, smtp_service, version_at_least, wire_policy, MapDiff, RELAY_DOMAINS,
        RELAY_RECIPIENTS, TRANSPORT,
    };
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn relay_domains_is_renamed_last_when_domains_come_and_first_when_they_only_go() {
        let names = [RELAY_DOMAINS, TRANSPORT, RELAY_RECIPIENTS];
        let diff = |added, removed| {
            let mut d = MapDiff::default();
            d.counts.added = added;
            d.counts.removed = removed;
            d
        };
        let last = [TRANSPORT, RELAY_RECIPIENTS, RELAY_DOMAINS];
        assert_eq!(
            install_order(&names, None),
            last,
            "built whole: as if adding"
        );
        assert_eq!(install_order(&names, Some(&diff(1, 0))), last);
        assert_eq!(install_order(&names, Some(&diff(1, 1))), last);
        assert_eq!(
            install_order(&names, Some(&diff(0, 1))),
            [RELAY_DOMAINS, TRANSPORT, RELAY_RECIPIENTS]
        );
        assert_eq!(install_order(&[TRANSPORT], Some(&diff(0, 1))), [TRANSPORT]);
    }

    #[test]
    fn policy_addresses_are_a_plain_absolute_socket_or_loopback_tcp() {
        use super::PolicyAddr;
        let parse = |v: &str| serde_json::from_value::<PolicyAddr>(serde_json::json!(v));
        assert!(matches!(
            parse("unix:/var/spool/postfix/private/mxfed-policy"),
            Ok(PolicyAddr::Unix(_))
        ));
        assert!(matches!(parse("127.0.0.1:10045"), Ok(PolicyAddr::Tcp(_))));
        assert!(matches!(parse("[::1]:10045"), Ok(PolicyAddr::Tcp(_))));
        for bad in [
            "unix:private/mxfed-policy",
            "unix:/tmp/a b",
            "unix:/tmp/a,b",
            "unix:/tmp/}x",
            "unix:/tmp/$x",
            "192.0.2.1:10045",
            "127.0.0.1:0",
            "localhost:10045",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("policy_listen"), "{bad}: {e}");
        }
    }

    /// The policy service is wired once, first, in its one safe form; a
    /// looser or older wiring of it is replaced, the admin's own items kept.
    #[test]
    fn the_policy_service_is_wired_first_and_safely() {
        let svc = "unix:private/mxfed-policy";
        let ours = "check_policy_service { unix:private/mxfed-policy, default_action=DUNNO, try_limit=1, timeout=10s }";
        assert_eq!(wire_policy("", svc).unwrap(), ours);
        assert_eq!(
            wire_policy("permit_mynetworks, reject_unauth_destination", svc).unwrap(),
            format!("{ours}, permit_mynetworks, reject_unauth_destination")
        );
        let wired = format!("{ours}, permit_mynetworks");
        assert_eq!(wire_policy(&wired, svc), None, "already wired");
        let spaced = "check_policy_service {unix:private/mxfed-policy,default_action=DUNNO,try_limit=1,timeout=10s}\n  permit_mynetworks";
        assert_eq!(wire_policy(spaced, svc), None, "the same, spelt otherwise");
        // Without default_action a stopped agent means 451: replaced.
        assert_eq!(
            wire_policy(
                "permit_mynetworks, check_policy_service unix:private/mxfed-policy, check_policy_service inet:127.0.0.1:10023",
                svc
            )
            .unwrap(),
            format!("{ours}, permit_mynetworks, check_policy_service inet:127.0.0.1:10023"),
            "another policy service (postgrey) stays"
        );
        // The old default address, and ours not first.
        assert_eq!(
            wire_policy(
                "check_policy_service { inet:127.0.0.1:10045, default_action=DUNNO }, permit_mynetworks",
                svc
            )
            .unwrap(),
            format!("{ours}, permit_mynetworks")
        );
        assert_eq!(
            wire_policy(&format!("permit_mynetworks, {ours}"), svc).unwrap(),
            format!("{ours}, permit_mynetworks")
        );
    }

    #[test]
    fn smtp_services_are_inet_smtpd_or_postscreen_with_their_ports() {
        let line = |l| smtp_service(l);
        assert_eq!(
            line("smtp       inet  n       -       y       -       -       smtpd"),
            Some((None, "smtp"))
        );
        assert_eq!(line("smtp inet n - y - 1 postscreen"), Some((None, "smtp")));
        assert_eq!(
            line("submission inet n - y - - smtpd -o syslog_name=postfix/submission"),
            Some((None, "submission"))
        );
        assert_eq!(
            line("127.0.0.1:2525 inet n - n - - smtpd"),
            Some((Some("127.0.0.1"), "2525"))
        );
        assert_eq!(
            line("[::1]:smtp inet n - n - - smtpd"),
            Some((Some("[::1]"), "smtp"))
        );
        assert_eq!(line("smtpd pass - - y - - smtpd"), None, "not inet");
        assert_eq!(line("cleanup unix n - y - 0 cleanup"), None);
        assert_eq!(
            line("127.0.0.1:10025 inet n - n - - lmtp"),
            None,
            "not an SMTP server"
        );
    }

    #[test]
    fn service_ports_are_numbers_or_names_from_etc_services() {
        let services = "# comment\nsmtp\t\t25/tcp\t\tmail\nsubmissions\t465/tcp\t\tssmtp smtps urd\nmine\t2626/udp\nmine\t2525/tcp\n";
        assert_eq!(service_port("2525", ""), Some(2525));
        assert_eq!(service_port("smtp", services), Some(25));
        assert_eq!(service_port("ssmtp", services), Some(465), "an alias");
        assert_eq!(service_port("urd", services), Some(465));
        assert_eq!(service_port("mine", services), Some(2525), "tcp only");
        assert_eq!(
            service_port("submission", ""),
            Some(587),
            "known without the file"
        );
        assert_eq!(service_port("imaginary", services), None);
    }

    /// `postconf` answers are kept while main.cf is as it was, and read
    /// again once it is edited (in place, the same size, or by rename).
    #[tokio::test]
    async fn postconf_answers_are_read_again_once_main_cf_changes() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("main.cf");
        std::fs::write(
            &main,
            "compatibility_level = 3.6\nrecipient_delimiter = +\n",
        )
        .unwrap();
        std::fs::copy("/etc/postfix/master.cf", dir.path().join("master.cf")).unwrap();
        let p = super::Postfix::open(dir.path(), Some("hash"))
            .await
            .unwrap();
        assert_eq!(p.param("recipient_delimiter").await.unwrap(), "+");
        // Kept: the same answer, with main.cf unchanged.
        assert_eq!(p.param("recipient_delimiter").await.unwrap(), "+");
        assert!(crate::util::lock(&p.postconf_cache)
            .contains_key(&vec!["-h".to_string(), "recipient_delimiter".to_string()]));
        // Edited in place to a value of the same length.
        std::fs::write(
            &main,
            "compatibility_level = 3.6\nrecipient_delimiter = -\n",
        )
        .unwrap();
        assert_eq!(p.param("recipient_delimiter").await.unwrap(), "-");
        // Replaced by rename.
        let new = dir.path().join("main.cf.new");
        std::fs::write(&new, "compatibility_level = 3.6\nrecipient_delimiter = .\n").unwrap();
        std::fs::rename(&new, &main).unwrap();
        assert_eq!(p.param("recipient_delimiter").await.unwrap(), ".");
        // A clone shares what was read.
        let q = p.clone();
        assert_eq!(
            q.params_expanded(&["recipient_delimiter"]).await.unwrap()["recipient_delimiter"],
            "."
        );
    }

    #[tokio::test]
    async fn interface_lists_cover_all_wildcards_loopback_only_and_addresses() {
        let all = interface_addrs(&["all"]).await.unwrap();
        assert!(all.contains(&"127.0.0.1".parse().unwrap()), "{all:?}");
        let v4 = interface_addrs(&["0.0.0.0"]).await.unwrap();
        assert!(v4.contains(&"127.0.0.1".parse().unwrap()) && v4.iter().all(IpAddr::is_ipv4));
        assert_eq!(interface_addrs(&["[::]"]).await.unwrap(), all);
        assert_eq!(
            interface_addrs(&["loopback-only"]).await.unwrap(),
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ]
        );
        assert_eq!(
            interface_addrs(&["192.0.2.7", "[2001:db8::1]", "192.0.2.7"])
                .await
                .unwrap(),
            vec![
                "192.0.2.7".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn domain_list_items_cover_names_dot_parents_and_parents_when_asked() {
        assert!(list_matches("a.example", "a.example", false));
        assert!(!list_matches("a.example", "b.example", true));
        assert!(list_matches("x.a.example", ".a.example", false));
        assert!(
            !list_matches("a.example", ".a.example", false),
            ".parent is only subdomains"
        );
        assert!(!list_matches("x.a.example", "a.example", false));
        assert!(list_matches("x.a.example", "a.example", true));
        assert!(
            !list_matches("xa.example", "a.example", true),
            "a label boundary"
        );
        assert_eq!(
            lookup_keys("x.a.example"),
            [
                "x.a.example",
                "a.example",
                ".a.example",
                "example",
                ".example"
            ]
        );
    }

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(version_at_least("3.7.11", (3, 5)));
        assert!(version_at_least("3.5.0", (3, 5)));
        assert!(version_at_least("4.0", (3, 5)));
        assert!(version_at_least("3.10.1", (3, 5)));
        assert!(!version_at_least("3.4.14", (3, 5)));
        assert!(!version_at_least("2.11.3", (3, 5)));
        assert!(!version_at_least("", (3, 5)));
    }

    #[test]
    fn list_items_keep_braced_groups_whole() {
        assert_eq!(
            list_tokens("a.example, b.example\n\tc.example,,"),
            ["a.example", "b.example", "c.example"]
        );
        assert_eq!(
            list_tokens(
                "$myhostname, inline:{ x.example=OK, { y.example = OK } } hash:/etc/postfix/v"
            ),
            [
                "$myhostname",
                "inline:{ x.example=OK, { y.example = OK } }",
                "hash:/etc/postfix/v"
            ]
        );
        // Debian's default relay_domains, unexpanded: one expression.
        assert_eq!(
            list_tokens("${{$compatibility_level} <level {2} ? {$mydestination} : {}}"),
            ["${{$compatibility_level} <level {2} ? {$mydestination} : {}}"]
        );
        assert!(list_tokens(" \n, ").is_empty());
        assert!(has_word(
            "permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
            "defer_unauth_destination"
        ));
        assert!(!has_word(
            "check_recipient_access inline:{ reject_unauth_destination=OK }",
            "reject_unauth_destination"
        ));
    }
}

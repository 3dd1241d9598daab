//! `mxfed`: the command line. clap for parsing, plain text or JSON for output;
//! everything else goes through the agent's control socket ([`client`]) or,
//! for `init` and `agent`, the agent library.

mod client;
mod docs;
mod journal;
mod output;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use mxfed_agent::config::{self, Config};
use mxfed_agent::{AgentError, EX_CONFIG};
use mxfed_proto::control::{ControlRequest, ControlResponse};

/// `mxfed --version`: the version and the git commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("MXFED_GIT_COMMIT"),
    ")"
);

/// Automatic backup MX between friends running Postfix.
#[derive(Debug, Parser)]
#[command(name = "mxfed", version = VERSION, about, long_about = None, after_help = "Exit codes: 0 ok, 1 refused or failed, 2 usage, 69 agent not running, 78 bad config or data dir.")]
struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "MXFED_CONFIG", default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this agent's identity, database and config file.
    Init(InitArgs),
    /// Run the agent in the foreground (for systemd); stops on SIGTERM or SIGINT.
    Agent,
    /// Print a one-line invite token for a friend's `mxfed join`.
    Invite {
        /// How long the token stays valid, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Pair with the friend whose invite token this is.
    Join {
        /// The token from the friend's `mxfed invite`, or '-' to read it from
        /// stdin (keeps it out of `ps`).
        token: String,
    },
    /// Show this agent and its peers.
    Status {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a peer, here and (when it is reachable) on its side.
    Unpair {
        /// The peer's name, as `mxfed status` shows it.
        name: String,
    },
    /// Manage the domains I host, which my friends back up.
    #[command(subcommand)]
    Domains(DomainsCommand),
    /// Show the change between the relay maps in force and what friends'
    /// accepted lists call for, then apply it (the agent does this by itself
    /// on every change; this is for checking and forcing).
    Apply {
        /// Only show the change.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The last changes to the Postfix maps: time, trigger, result.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How many entries.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Postfix wiring.
    #[command(subcommand)]
    Postfix(PostfixCommand),
    /// What my Postfix queue holds for each friend's domains (a fresh
    /// `postqueue -j` scan). Unknown, never 0, when Postfix is down.
    Queue {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check the setup the backup-MX arrangement needs (DNS MX of my domains,
    /// local-domain conflicts, queue lifetimes, Postfix wiring, clock skew
    /// with friends) and say what to fix. Exit 1 if a check fails.
    Doctor {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Ask the friends that hold my mail to deliver it now (ETRN over the
    /// session; each friend honours it at most every 30 s).
    Flush {
        /// Only this friend.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Write the man pages and shell completions into DIR (the package
    /// build's step; deploy/deb.sh).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write man/ and completions/ into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PostfixCommand {
    /// Wire main.cf (relay_domains, transport_maps, relay_recipient_maps) to
    /// the maps mxfed writes into <postfix_config_dir>/mxfed/. Shows the exact
    /// change first; running it twice changes nothing; refuses to make an
    /// open relay. Does not need the agent.
    Setup {
        /// Only show the change.
        #[arg(long)]
        dry_run: bool,
        /// Also let friends' mail hosts through postscreen: add the map
        /// mxfed keeps of their addresses (cidr:<dir>/mxfed/friends, each
        /// `permit`) to postscreen_access_list, so mail a friend relays for
        /// me is not judged as if the friend had written it.
        #[arg(long)]
        trust_friends: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DomainsCommand {
    /// Add domains (or change their next hop); friends get the new list at once.
    Add {
        /// Domains, e.g. example.org or bücher.example (stored as punycode).
        #[arg(required_unless_present = "from_file")]
        domains: Vec<String>,
        /// Where friends relay these domains' mail: HOST, HOST:PORT, [IP] or [IP]:PORT.
        /// Default: my mail_host.
        #[arg(long, value_name = "HOST[:PORT]")]
        next_hop: Option<String>,
        /// Also read domains from this file, one per line ('#' starts a comment; '-' is stdin).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// Remove domains; friends stop backing them up.
    Remove {
        /// Domains to remove.
        #[arg(required = true)]
        domains: Vec<String>,
    },
    /// Show the domains I host and my signed list's version.
    List {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct InitArgs {
    /// This agent's name, shown to friends (a-z, 0-9, '-', '_', '.').
    #[arg(long)]
    name: String,
    /// Host name of this server's own Postfix: the host your domains' MX points to.
    #[arg(long)]
    mail_host: String,
    /// UDP address to listen on.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], config::DEFAULT_PORT)))]
    listen: SocketAddr,
    /// Address friends dial (repeatable). Default: --listen if it is a
    /// specific address, else the addresses --mail-host resolves to.
    #[arg(long)]
    advertise: Vec<SocketAddr>,
    /// Where the identity and database live.
    #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Postfix config directory.
    #[arg(long, default_value = config::DEFAULT_POSTFIX_DIR)]
    postfix_config_dir: PathBuf,
    /// Control socket the CLI uses to reach the agent.
    #[arg(long, default_value = config::DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
}

/// An error for the user, with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Failure {
            code: e.exit_code().try_into().unwrap_or(1),
            message: e.to_string(),
        }
    }
}

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mxfed: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("mxfed: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| Failure {
        code: EX_CONFIG as u8,
        message: e.to_string(),
    })
}

/// Loads the config, sends `$req` to the agent and evaluates to the payload
/// of the expected `$variant`; any other answer is an error (returned).
macro_rules! ask {
    ($cli:expr, $req:expr, $variant:path) => {{
        let config = load_config(&$cli.config)?;
        match client::call(&config, &$req).await? {
            $variant(payload) => payload,
            other => return Err(client::unexpected(other)),
        }
    }};
}

/// Prints `value` as JSON with `--json`, else with `table`.
fn show<T: serde::Serialize>(json: bool, value: &T, table: impl FnOnce(&T)) {
    if json {
        output::json(value);
    } else {
        table(value);
    }
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Init(args) => init(&cli.config, args).await,
        Command::Agent => agent(&cli.config).await,
        Command::Invite { ttl } => {
            let config = load_config(&cli.config)?;
            let ttl_secs = ttl.as_secs().max(1);
            match client::call(&config, &ControlRequest::Invite { ttl_secs }).await? {
                ControlResponse::Invite { token, expires_at } => {
                    output::line(&token);
                    eprintln!(
                        "mxfed: invite valid until {} (single use); give it to your friend for `mxfed join`",
                        output::time(expires_at)
                    );
                    Ok(())
                }
                other => Err(client::unexpected(other)),
            }
        }
        Command::Join { token } => {
            let config = load_config(&cli.config)?;
            let token = if token == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| fail(format!("cannot read the token from stdin: {e}")))?
                    .trim()
                    .to_string()
            } else {
                token
            };
            match client::call(&config, &ControlRequest::Join { token }).await? {
                ControlResponse::Joined { name, id } => {
                    output::line(&format!("paired with {name} ({id})"));
                    Ok(())
                }
                other => Err(client::unexpected(other)),
            }
        }
        Command::Status { json } => {
            let report = ask!(cli, ControlRequest::Status, ControlResponse::Status);
            show(json, &report, output::status_table);
            Ok(())
        }
        Command::Domains(cmd) => {
            let config = load_config(&cli.config)?;
            domains(&config, cmd).await
        }
        Command::Apply { dry_run, json } => {
            let r = ask!(
                cli,
                ControlRequest::Apply { dry_run },
                ControlResponse::Applied
            );
            show(json, &r, output::apply_report);
            if r.result == "failed" {
                return Err(fail(format!(
                    "apply failed at step {}: {}",
                    r.step.as_deref().unwrap_or("?"),
                    r.error.as_deref().unwrap_or("?")
                )));
            }
            Ok(())
        }
        Command::History { json, limit } => {
            let h = ask!(
                cli,
                ControlRequest::History { limit },
                ControlResponse::History
            );
            show(json, &h, |h| output::history(h));
            Ok(())
        }
        Command::Queue { json } => {
            let q = ask!(cli, ControlRequest::Queue, ControlResponse::Queue);
            show(json, &q, output::queue);
            Ok(())
        }
        Command::Doctor { json } => {
            let r = ask!(cli, ControlRequest::Doctor, ControlResponse::Doctor);
            show(json, &r, output::doctor);
            if !r.ok {
                return Err(fail("some checks failed; see the fixes above"));
            }
            Ok(())
        }
        Command::Flush { peer } => {
            let results = ask!(
                cli,
                ControlRequest::Flush { peer },
                ControlResponse::Flushed
            );
            for r in &results {
                output::line(&format!("{}: {}", r.peer, r.result));
            }
            if results.is_empty() {
                output::line("no peers");
            }
            Ok(())
        }
        Command::GenerateDocs { out } => {
            let files = docs::generate(Cli::command(), &out)
                .map_err(|e| fail(format!("cannot write into {}: {e}", out.display())))?;
            for f in files {
                output::line(&f.display().to_string());
            }
            Ok(())
        }
        Command::Postfix(PostfixCommand::Setup {
            dry_run,
            trust_friends,
        }) => {
            let config = load_config(&cli.config)?;
            postfix_setup(&config, dry_run, trust_friends).await
        }
        Command::Unpair { name } => {
            let config = load_config(&cli.config)?;
            match client::call(&config, &ControlRequest::Unpair { name: name.clone() }).await? {
                ControlResponse::Unpaired { notified } => {
                    if notified {
                        output::line(&format!("unpaired {name}; it was told and removed us too"));
                    } else {
                        output::line(&format!(
                            "unpaired {name} here; it was not reachable, and will drop us when it next connects"
                        ));
                    }
                    Ok(())
                }
                other => Err(client::unexpected(other)),
            }
        }
    }
}

async fn domains(config: &Config, cmd: DomainsCommand) -> Result<(), Failure> {
    let (result, json) = match cmd {
        DomainsCommand::Add {
            mut domains,
            next_hop,
            from_file,
        } => {
            if let Some(path) = from_file {
                domains.extend(read_domain_file(&path)?);
            }
            // All names are checked here first, so a bad one in a later batch
            // cannot leave the earlier batches applied.
            for d in &domains {
                mxfed_proto::domain::Domain::parse(d)
                    .map_err(|e| fail(format!("invalid domain: {e}")))?;
            }
            // One request: the whole change is one new version of the list.
            let req = ControlRequest::DomainsAdd { domains, next_hop };
            (Some(client::call(config, &req).await?), false)
        }
        DomainsCommand::Remove { domains } => {
            let req = ControlRequest::DomainsRemove { domains };
            (Some(client::call(config, &req).await?), false)
        }
        DomainsCommand::List { json } => (
            Some(client::call(config, &ControlRequest::DomainsList).await?),
            json,
        ),
    };
    match result {
        Some(ControlResponse::DomainsChanged(c)) => {
            output::line(&format!(
                "my list is now version {}: {} added or changed, {} removed, {} in all",
                c.version, c.added, c.removed, c.total
            ));
            Ok(())
        }
        Some(ControlResponse::Domains(d)) => {
            if json {
                output::json(&d);
            } else {
                output::my_domains(&d);
            }
            Ok(())
        }
        Some(other) => Err(client::unexpected(other)),
        None => Err(fail("no domains given")),
    }
}

fn read_domain_file(path: &std::path::Path) -> Result<Vec<String>, Failure> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

async fn postfix_setup(config: &Config, dry_run: bool, trust_friends: bool) -> Result<(), Failure> {
    use mxfed_agent::postfix::Postfix;
    let dir = &config.postfix_config_dir;
    if !Postfix::present(dir) {
        return Err(Failure {
            code: EX_CONFIG as u8,
            message: format!(
                "no main.cf in {} (set postfix_config_dir in {})",
                dir.display(),
                "the config"
            ),
        });
    }
    let map_type =
        (!config.postfix_map_type.is_empty()).then_some(config.postfix_map_type.as_str());
    let postfix = Postfix::open(dir, map_type)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let plan = postfix
        .plan_setup(trust_friends, &config.policy_listen)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if plan.changes.is_empty() && plan.create_maps.is_empty() {
        output::line(&format!(
            "{}/main.cf is already wired to the mxfed maps; nothing to change",
            dir.display()
        ));
        return Ok(());
    }
    for m in &plan.create_maps {
        let name = m.file_name().and_then(|n| n.to_str()).unwrap_or("");
        output::line(&format!("create empty map {}", postfix.map_ref(name)));
    }
    for c in &plan.changes {
        output::line(&format!(
            "postconf -c {} -e '{} = {}'",
            dir.display(),
            c.name,
            c.new
        ));
        output::line(&format!("    (was: {} = {})", c.name, c.old));
    }
    if dry_run {
        output::line("dry run: nothing changed");
        return Ok(());
    }
    postfix
        .setup(&plan)
        .await
        .map_err(|e| fail(e.to_string()))?;
    output::line("done; the agent keeps these maps in step with friends' accepted domains");
    Ok(())
}

async fn init(config_path: &std::path::Path, args: InitArgs) -> Result<(), Failure> {
    let mut config = Config::new(args.name, args.mail_host);
    config.listen = args.listen;
    config.data_dir = args.data_dir;
    config.postfix_config_dir = args.postfix_config_dir;
    config.control_socket = args.control_socket;
    config.check(config_path).map_err(|e| Failure {
        code: EX_CONFIG as u8,
        message: e.to_string(),
    })?;
    config.advertise = if !args.advertise.is_empty() {
        args.advertise
    } else if !args.listen.ip().is_unspecified() {
        vec![args.listen]
    } else {
        let resolved: Vec<SocketAddr> = (config.mail_host.as_str(), args.listen.port())
            .to_socket_addrs()
            .map(|a| a.filter(|a| !a.ip().is_loopback()).collect())
            .unwrap_or_default();
        if resolved.is_empty() {
            return Err(Failure {
                code: EX_CONFIG as u8,
                message: format!(
                    "cannot tell which address friends should dial: --listen is a wildcard and {} does not resolve to a non-loopback address; pass --advertise IP:PORT",
                    config.mail_host
                ),
            });
        }
        resolved
    };
    let report = mxfed_agent::init(&config, config_path).await?;
    output::line(&format!("initialised agent {}", config.name));
    output::line(&format!("peer id:   {}", report.id));
    if report.kept_identity {
        output::line(&format!(
            "identity:  kept the existing key in {}",
            config.data_dir.display()
        ));
    }
    output::line(&format!("config:    {}", config_path.display()));
    output::line(&format!(
        "advertise: {}",
        config
            .advertise
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    output::line("next:      start `mxfed agent`, then `mxfed invite` or `mxfed join TOKEN`");
    Ok(())
}

async fn agent(config_path: &std::path::Path) -> Result<(), Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    // Before anything else: SIGHUP's default action would end the agent.
    let mut hup =
        signal(SignalKind::hangup()).map_err(|e| fail(format!("cannot handle SIGHUP: {e}")))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| fail(format!("cannot handle SIGTERM: {e}")))?;
    init_logging();
    let config = load_config(config_path)?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    // SIGHUP (systemctl reload mxfed): read the file again; a file that
    // does not load changes nothing.
    let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
    let path = config_path.to_path_buf();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(
                step = "config reload",
                "SIGHUP: reading {} again",
                path.display()
            );
            match Config::load(&path) {
                Ok(new) => {
                    if reload_tx.send(new).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(
                    step = "config reload",
                    "{e}; nothing changed: the agent goes on with the config it has"
                ),
            }
        }
    });
    mxfed_agent::run(config, shutdown, reloads)
        .await
        .map_err(Failure::from)
}

/// Logs to journald ([`journal::Journald`]: each event's fields in its
/// text and as journal fields, PEER, DOMAIN, STEP, ...), when stderr is
/// the journal (systemd sets JOURNAL_STREAM to its device and inode);
/// otherwise as text lines on stderr. MXFED_LOG filters either (default
/// `info`).
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("MXFED_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if stderr_is_journal() {
        match journal::Journald::connect() {
            Ok(journal) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(journal)
                    .init();
                return;
            }
            Err(e) => eprintln!("mxfed: cannot log to journald ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Whether stderr is connected to journald: JOURNAL_STREAM names its
/// device and inode ("DEV:INO", systemd.exec(5)).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

//! `mxfed generate-docs --out DIR` (hidden): the man pages and shell
//! completions the Debian package ships, made from the code at build time
//! (deploy/deb.sh), never written by hand:
//!
//! - `man/man1/`: mxfed(1) and one page per subcommand (`mxfed-init.1`,
//!   `mxfed-domains-add.1`, ...), from the clap definitions (clap_mangen);
//! - `man/man5/mxfed.toml.5`: every config key with its default and what it
//!   does, from `deploy/mxfed.toml.example` (which a test keeps in step
//!   with [`Config`](mxfed_agent::config::Config)), and which keys
//!   `systemctl reload mxfed` applies live;
//! - `completions/`: `mxfed.bash`, `_mxfed` (zsh), `mxfed.fish` (clap_complete).

use std::io;
use std::path::{Path, PathBuf};

use clap_mangen::roff::{bold, italic, roman, Roff};

use mxfed_agent::config::{self, LIVE_KEYS};

/// The documented config file, as shipped in /etc/mxfed/mxfed.toml.example.
const EXAMPLE: &str = include_str!("../../deploy/mxfed.toml.example");

/// Writes everything under `out`; returns the files written.
pub fn generate(cmd: clap::Command, out: &Path) -> io::Result<Vec<PathBuf>> {
    let man1 = out.join("man/man1");
    let man5 = out.join("man/man5");
    let completions = out.join("completions");
    for d in [&man1, &man5, &completions] {
        std::fs::create_dir_all(d)?;
    }
    clap_mangen::generate_to(cmd.clone(), &man1)?;
    let page = man5.join("mxfed.toml.5");
    std::fs::write(&page, config_page(EXAMPLE))?;
    let mut cmd = cmd;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd, "mxfed", &completions)?;
    }
    let mut written = Vec::new();
    for d in [man1, man5, completions] {
        for e in std::fs::read_dir(d)? {
            written.push(e?.path());
        }
    }
    written.sort();
    Ok(written)
}

/// One key of the example file: its name, the line that sets it (or shows
/// it, commented out, for a key unset by default) and the comment above it.
#[derive(Debug, PartialEq)]
pub struct KeyDoc {
    pub key: String,
    pub line: String,
    pub text: String,
}

/// The example file's keys, in order (its header, the comment before the
/// first blank line, is not one).
pub fn parse_example(example: &str) -> Vec<KeyDoc> {
    let mut keys = Vec::new();
    for block in example.split("\n\n").skip(1) {
        let mut text = Vec::new();
        for line in block.lines() {
            let bare = line.trim_start_matches('#').trim();
            match bare.split_once(" = ") {
                Some((key, _)) if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') => {
                    keys.push(KeyDoc {
                        key: key.to_string(),
                        line: bare.to_string(),
                        text: text.join(" "),
                    });
                    text.clear();
                }
                _ => text.push(bare),
            }
        }
    }
    keys
}

/// mxfed.toml(5), in roff.
pub fn config_page(example: &str) -> String {
    let keys = parse_example(example);
    let mut r = Roff::new();
    r.control(
        "TH",
        [
            "MXFED.TOML",
            "5",
            "",
            &format!("mxfed {}", env!("CARGO_PKG_VERSION")),
            "File Formats",
        ],
    );
    r.control("SH", ["NAME"]);
    r.text([roman("mxfed.toml - configuration of the mxfed agent")]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([bold(config::DEFAULT_CONFIG)]);
    r.control("SH", ["DESCRIPTION"]);
    r.text([roman(
        "A TOML file. `mxfed init` writes it; every other command reads it (`--config`, \
         or $MXFED_CONFIG). Unknown keys and bad values are refused with an error that \
         names the file and the key, before anything starts (exit 78). The package \
         ships every key with its default and its comment as ",
    )]);
    r.text([italic("/etc/mxfed/mxfed.toml.example"), roman(".")]);
    r.control("SH", ["KEYS"]);
    for k in &keys {
        r.control("TP", []);
        r.text([bold(&k.line)]);
        let live = if LIVE_KEYS.contains(&k.key.as_str()) {
            " Applied by `systemctl reload mxfed` (SIGHUP)."
        } else {
            " Takes a restart (`systemctl restart mxfed`)."
        };
        r.text([roman(format!("{}{live}", k.text))]);
    }
    r.control("SH", ["RELOADING"]);
    r.text([roman(format!(
        "`systemctl reload mxfed` sends SIGHUP: the agent reads the file again and applies \
         the keys that can change while it runs ({}) at once, without dropping a session. \
         A change to any other key is named in the log as needing a restart, and the \
         running agent keeps the value it started with. A file that does not load is \
         refused as a whole, and the agent goes on as it was.",
        LIVE_KEYS.join(", ")
    ))]);
    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([bold(config::DEFAULT_CONFIG)]);
    r.text([roman("The configuration.")]);
    r.control("TP", []);
    r.text([bold("/etc/mxfed/mxfed.toml.example")]);
    r.text([roman("Every key, with its default.")]);
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("mxfed"),
        roman("(1), "),
        bold("mxfed-init"),
        roman("(1), "),
        bold("postconf"),
        roman("(5)"),
    ]);
    r.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every visible command path under `cmd`, as man page names
    /// (`mxfed`, `mxfed-domains`, `mxfed-domains-add`, ...).
    fn pages(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        let name = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        out.push(name.clone());
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sub, &name, out);
        }
    }

    #[test]
    fn every_command_has_its_man_page_and_its_completions() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(crate::Cli::command(), dir.path()).unwrap();
        let mut want = Vec::new();
        pages(&crate::Cli::command(), "", &mut want);
        assert!(want.len() > 15, "{want:?}");
        for page in &want {
            let path = dir.path().join(format!("man/man1/{page}.1"));
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(text.contains(".SH NAME"), "{page}");
        }
        let man1 = std::fs::read_dir(dir.path().join("man/man1"))
            .unwrap()
            .count();
        assert_eq!(
            man1,
            want.len(),
            "a page for a hidden command, or one too many"
        );
        assert!(!dir.path().join("man/man1/mxfed-generate-docs.1").exists());
        for (file, needle) in [
            ("mxfed.bash", "domains"),
            ("_mxfed", "trust-friends"),
            ("mxfed.fish", "dry-run"),
        ] {
            let text = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
            assert!(text.contains(needle), "{file} lacks {needle}");
        }
        assert!(files.iter().any(|f| f.ends_with("man/man5/mxfed.toml.5")));
        // mxfed(1) says which version and commit it documents.
        let top = std::fs::read_to_string(dir.path().join("man/man1/mxfed.1")).unwrap();
        assert!(top.contains(env!("MXFED_GIT_COMMIT")), "{top}");
    }

    #[test]
    fn the_config_page_has_every_key_and_says_which_reload_applies() {
        let keys = parse_example(EXAMPLE);
        let page = config_page(EXAMPLE);
        // Every key Config knows (the example documents each: a test in
        // mxfed-agent's config.rs) has its entry, in roff's escaped form.
        let config = mxfed_agent::config::Config::new("me".into(), "mail.me.example".into());
        let mut known: Vec<String> = toml::Value::try_from(&config)
            .unwrap()
            .as_table()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        known.extend(["metrics_listen".to_string(), "tls_next_keys".to_string()]);
        for key in &known {
            assert!(keys.iter().any(|k| &k.key == key), "example lacks {key}");
        }
        for k in &keys {
            assert!(page.contains(&k.key), "page lacks {}", k.key);
        }
        for live in LIVE_KEYS {
            assert!(keys.iter().any(|k| k.key == *live), "{live} is no key");
        }
        assert_eq!(
            page.matches("Applied by `systemctl reload mxfed`").count(),
            LIVE_KEYS.len()
        );
        assert_eq!(
            page.matches("Takes a restart").count(),
            keys.len() - LIVE_KEYS.len()
        );
    }

    #[test]
    fn the_example_is_read_key_by_key_with_its_comment() {
        let keys = parse_example(EXAMPLE);
        let name = &keys[0];
        assert_eq!(name.key, "name");
        assert_eq!(name.line, "name = \"me\"");
        assert!(name.text.contains("This agent's name"), "{}", name.text);
        // A key unset by default is shown, commented out in the file.
        let metrics = keys.iter().find(|k| k.key == "metrics_listen").unwrap();
        assert_eq!(metrics.line, "metrics_listen = \"127.0.0.1:9787\"");
        assert!(metrics.text.contains("Prometheus"), "{}", metrics.text);
    }
}

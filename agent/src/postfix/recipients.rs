//! The valid recipients of my domains, as this Postfix knows them
//! ([`Postfix::recipients`]), so friends that back me up accept exactly
//! those (issue: "a backup MX that is not a spam hole").
//!
//! For each domain, which tables decide its recipients depends on how this
//! Postfix handles it:
//! - every domain: the addresses of `virtual_alias_maps`;
//! - in `mydestination`: local users, per `local_recipient_maps` (bare
//!   names, and the bare keys of `virtual_alias_maps`);
//! - in `virtual_mailbox_domains`: `virtual_mailbox_maps`;
//! - in `relay_domains` (outside mxfed's own map): `relay_recipient_maps`.
//!
//! Tables are listed with `postmap -s` (hash, lmdb, btree, texthash,
//! inline); cdb cannot be sequenced, so its source file is read; a
//! `unix:passwd.byname` table is `/etc/passwd`. A domain that depends on a
//! table that cannot be listed (SQL, LDAP, regexp, ...), whose recipient
//! table is empty (Postfix then accepts every recipient), or that this
//! Postfix neither delivers nor relays, gets no list, with the reason.
//! A key `@domain` is a catch-all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use mxfed_proto::domain::Domain;
use mxfed_proto::recipients::Recipient;

use super::{list_tokens, Postfix, PostfixError};

/// The recipients of my domains as read from Postfix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadRecipients {
    /// Addresses and catch-alls of the domains that have a list.
    pub items: BTreeSet<Recipient>,
    /// Domains with no list, and why.
    pub unlisted: BTreeMap<Domain, String>,
    /// `recipient_delimiter`.
    pub delimiter: String,
    /// The files this was read from (main.cf, tables and their compiled
    /// forms, /etc/passwd): a change to one of them may change the result.
    pub files: Vec<PathBuf>,
}

/// How this Postfix handles a domain.
#[derive(Debug, Clone, Copy, Default)]
struct Class {
    local: bool,
    virtual_mailbox: bool,
    virtual_alias: bool,
    relay: bool,
}

/// The keys of the tables in one parameter, or why they cannot be listed.
type Keys = Result<Vec<String>, String>;

impl Postfix {
    /// The valid recipients of `domains` (mine), and the domains whose
    /// recipients cannot be told, with the reason.
    pub async fn recipients(&self, domains: &[Domain]) -> Result<ReadRecipients, PostfixError> {
        let mut classes: HashMap<&Domain, Class> = HashMap::new();
        for (param, set) in [
            ("mydestination", 0),
            ("virtual_mailbox_domains", 1),
            ("virtual_alias_domains", 2),
            ("relay_domains", 3),
        ] {
            for d in self.domains_in(param, domains).await? {
                let Some(d) = domains.iter().find(|x| **x == d) else {
                    continue;
                };
                let c = classes.entry(d).or_default();
                match set {
                    0 => c.local = true,
                    1 => c.virtual_mailbox = true,
                    2 => c.virtual_alias = true,
                    _ => c.relay = true,
                }
            }
        }
        // Postfix puts a domain in one address class only, in this order:
        // local, virtual alias, virtual mailbox, relay.
        for c in classes.values_mut() {
            if c.local {
                (c.virtual_alias, c.virtual_mailbox, c.relay) = (false, false, false);
            } else if c.virtual_alias {
                (c.virtual_mailbox, c.relay) = (false, false);
            } else if c.virtual_mailbox {
                c.relay = false;
            }
        }
        let any = |f: fn(&Class) -> bool| classes.values().any(f);
        let mut files = vec![self.config_dir.join("main.cf")];
        let aliases = self.table_keys("virtual_alias_maps", &mut files).await?;
        let local = match any(|c| c.local) {
            true => Some(self.table_keys("local_recipient_maps", &mut files).await?),
            false => None,
        };
        let mailboxes = match any(|c| c.virtual_mailbox) {
            true => Some(self.table_keys("virtual_mailbox_maps", &mut files).await?),
            false => None,
        };
        let relay = match any(|c| c.relay) {
            true => Some(self.table_keys("relay_recipient_maps", &mut files).await?),
            false => None,
        };
        let mut out = ReadRecipients {
            delimiter: self.param("recipient_delimiter").await?,
            files,
            ..ReadRecipients::default()
        };
        for d in domains {
            let class = classes.get(d).copied().unwrap_or_default();
            match recipients_of(d, class, &aliases, &local, &mailboxes, &relay) {
                Ok(items) => out.items.extend(items),
                Err(why) => {
                    out.unlisted.insert(d.clone(), why);
                }
            }
        }
        Ok(out)
    }

    /// Which of `candidates` the domain list parameter `param` names.
    async fn domains_in(
        &self,
        param: &str,
        candidates: &[Domain],
    ) -> Result<HashSet<Domain>, PostfixError> {
        let values = self
            .params_expanded(&["parent_domain_matches_subdomains", param])
            .await?;
        let value = |n: &str| values.get(n).map_or("", String::as_str);
        let parent = super::has_word(value("parent_domain_matches_subdomains"), param);
        self.domain_list_matches(value(param), parent, candidates)
            .await
    }

    /// Whether the parameter `param` names any table (mxfed's own maps left
    /// out), and the keys of all of them, lower case, or why one of them
    /// cannot be listed.
    async fn table_keys(
        &self,
        param: &str,
        files: &mut Vec<PathBuf>,
    ) -> Result<(bool, Keys), PostfixError> {
        let value = self.param_expanded(param).await?;
        let ours = self.map_dir().display().to_string();
        let mut keys = Vec::new();
        let mut tables = false;
        for token in list_tokens(&value) {
            let table = token.strip_prefix("proxy:").unwrap_or(token);
            let Some((kind, name)) = table.split_once(':') else {
                continue;
            };
            if name.starts_with(&ours) {
                continue;
            }
            tables = true;
            if name.starts_with('/') {
                let source = name.strip_suffix(".cdb").unwrap_or(name);
                files.push(source.into());
                for suffix in [".db", ".lmdb", ".cdb"] {
                    files.push(format!("{source}{suffix}").into());
                }
            }
            let listed = match kind {
                "hash" | "lmdb" | "btree" | "texthash" | "inline" => {
                    match self
                        .run("list a table (postmap -s)", "postmap", &["-s", table], None)
                        .await
                    {
                        Ok(out) => Ok(out
                            .lines()
                            .filter_map(|l| l.split_whitespace().next())
                            .map(str::to_ascii_lowercase)
                            .collect()),
                        Err(e) => Err(format!("{param}: cannot list {table}: {}", e.message)),
                    }
                }
                // postmap cannot sequence cdb; its source file is beside it.
                "cdb" => {
                    let source = name.strip_suffix(".cdb").unwrap_or(name);
                    match tokio::fs::read_to_string(source).await {
                        Ok(text) => Ok(source_keys(&text)),
                        Err(e) => Err(format!(
                            "{param}: cdb tables cannot be listed, and the source {source} cannot be read ({e})"
                        )),
                    }
                }
                "unix" if name == "passwd.byname" => {
                    files.push("/etc/passwd".into());
                    passwd_users().await
                }
                _ => Err(format!(
                    "{param} uses {kind}:{name}, and {kind} tables cannot be listed"
                )),
            };
            match listed {
                Ok(k) => keys.extend(k),
                Err(why) => return Ok((tables, Err(why))),
            }
        }
        Ok((tables, Ok(keys)))
    }
}

/// The keys of a Postfix table source file: the first word of each line
/// that is neither a comment, blank, nor a continuation.
fn source_keys(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|k| !k.starts_with('#'))
        // An aliases(5) file writes `name: value`.
        .map(|k| k.trim_end_matches(':').to_ascii_lowercase())
        .collect()
}

/// The users in /etc/passwd, if the system's users are all there
/// (`passwd:` in /etc/nsswitch.conf names only `files`, `compat` or
/// `systemd`); users from LDAP, NIS or SSSD cannot be listed.
async fn passwd_users() -> Keys {
    if let Ok(nss) = tokio::fs::read_to_string("/etc/nsswitch.conf").await {
        let sources = nss
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("passwd:"))
            .unwrap_or("files");
        if let Some(other) = sources
            .split_whitespace()
            .filter(|s| !s.starts_with('['))
            .find(|s| !matches!(*s, "files" | "compat" | "systemd"))
        {
            return Err(format!(
                "local_recipient_maps uses the system's users, and /etc/nsswitch.conf takes them from {other} too, which cannot be listed"
            ));
        }
    }
    let text = tokio::fs::read_to_string("/etc/passwd")
        .await
        .map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|u| !u.is_empty() && !u.starts_with(['+', '-', '#']))
        .map(str::to_ascii_lowercase)
        .collect())
}

/// The recipients of `d` from the tables' keys, or why it has no list.
/// Each table argument is `(has tables, keys)`; `None` when not needed.
fn recipients_of(
    d: &Domain,
    class: Class,
    aliases: &(bool, Keys),
    local: &Option<(bool, Keys)>,
    mailboxes: &Option<(bool, Keys)>,
    relay: &Option<(bool, Keys)>,
) -> Result<Vec<Recipient>, String> {
    if !(class.local || class.virtual_mailbox || class.virtual_alias || class.relay) {
        return Err(format!(
            "this Postfix neither delivers nor relays {d} (mydestination, virtual_mailbox_domains, virtual_alias_domains, relay_domains), so its recipients are not known here"
        ));
    }
    let mut items = Vec::new();
    let mut unusable = None;
    let mut add = |keys: &[String], bare: bool| {
        for k in keys {
            let address = match k.rsplit_once('@') {
                Some((_, domain)) if domain == d.as_str() => k.clone(),
                Some(_) => continue,
                None if bare => format!("{k}@{d}"),
                None => continue,
            };
            match Recipient::parse(&address) {
                Ok(r) => items.push(r),
                // An address Postfix takes but a recipient list cannot hold
                // (quoted or non-ASCII local part, or a longer one): a list
                // without it would have backups refuse it.
                Err(_) => {
                    unusable.get_or_insert(address);
                }
            }
        }
    };
    let keys = |t: &(bool, Keys)| t.1.clone();
    add(&keys(aliases)?, class.local);
    if class.local {
        match local {
            Some((false, _)) => {
                return Err(format!(
                    "local_recipient_maps is empty, so this Postfix accepts every recipient of {d}"
                ))
            }
            Some(t) => add(&keys(t)?, true),
            None => {}
        }
    }
    if class.virtual_mailbox {
        if let Some(t) = mailboxes {
            add(&keys(t)?, false);
        }
    }
    if class.relay {
        match relay {
            Some((false, _)) => {
                return Err(format!(
                    "relay_recipient_maps is empty, so this Postfix accepts every recipient of {d}"
                ))
            }
            Some(t) => add(&keys(t)?, false),
            None => {}
        }
    }
    if let Some(address) = unusable {
        return Err(format!(
            "{address:?} cannot be published (only unquoted ASCII local parts of up to 64 characters can)"
        ));
    }
    if items.is_empty() {
        return Err(format!(
            "no valid recipient of {d} was found in this Postfix's tables"
        ));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    fn keys(k: &[&str]) -> (bool, Keys) {
        (true, Ok(k.iter().map(|s| s.to_string()).collect()))
    }

    fn names(v: Vec<Recipient>) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|r| r.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn each_class_of_domain_draws_on_its_own_tables() {
        let aliases = keys(&[
            "postmaster@v.example",
            "info",
            "@catch.example",
            "x@other.example",
        ]);
        let local = Some(keys(&["root", "bob"]));
        let mailboxes = Some(keys(&["carol@v.example"]));
        let relay = Some(keys(&["dave@r.example"]));
        let local_class = Class {
            local: true,
            ..Class::default()
        };
        assert_eq!(
            names(
                recipients_of(
                    &d("l.example"),
                    local_class,
                    &aliases,
                    &local,
                    &mailboxes,
                    &relay
                )
                .unwrap()
            ),
            ["bob@l.example", "info@l.example", "root@l.example"]
        );
        let vm = Class {
            virtual_mailbox: true,
            ..Class::default()
        };
        assert_eq!(
            names(
                recipients_of(&d("v.example"), vm, &aliases, &local, &mailboxes, &relay).unwrap()
            ),
            ["carol@v.example", "postmaster@v.example"],
            "bare alias keys are for local domains only"
        );
        let va = Class {
            virtual_alias: true,
            ..Class::default()
        };
        assert_eq!(
            names(
                recipients_of(
                    &d("catch.example"),
                    va,
                    &aliases,
                    &local,
                    &mailboxes,
                    &relay
                )
                .unwrap()
            ),
            ["@catch.example"]
        );
        let r = Class {
            relay: true,
            ..Class::default()
        };
        assert_eq!(
            names(recipients_of(&d("r.example"), r, &aliases, &local, &mailboxes, &relay).unwrap()),
            ["dave@r.example"]
        );
    }

    #[test]
    fn a_domain_without_a_knowable_list_says_why() {
        let aliases = keys(&[]);
        let why = |class, local: Option<(bool, Keys)>, relay: Option<(bool, Keys)>| {
            recipients_of(&d("x.example"), class, &aliases, &local, &None, &relay).unwrap_err()
        };
        assert!(why(Class::default(), None, None).contains("neither delivers nor relays"));
        let local = Class {
            local: true,
            ..Class::default()
        };
        assert!(
            why(local, Some((false, Ok(vec![]))), None).contains("local_recipient_maps is empty")
        );
        assert!(why(
            local,
            Some((true, Err("mysql tables cannot be listed".into()))),
            None
        )
        .contains("mysql"));
        let relay = Class {
            relay: true,
            ..Class::default()
        };
        assert!(
            why(relay, None, Some((false, Ok(vec![])))).contains("relay_recipient_maps is empty")
        );
        assert!(
            why(relay, None, Some(keys(&["a@elsewhere.example"]))).contains("no valid recipient")
        );
    }

    /// A Postfix configuration on disk, read with the real `postconf` and
    /// `postmap` (Postfix need not run): one domain of each kind, each
    /// table type that can be listed, and one that cannot.
    #[tokio::test]
    async fn the_recipients_of_each_domain_come_from_this_postfix() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path();
        let write = |name: &str, text: &str| std::fs::write(etc.join(name), text).unwrap();
        write(
            "vmailbox",
            "carol@vm.example x\nCarl@VM.example x\nnot-mine@else.example x\n",
        );
        write(
            "virtual",
            "postmaster@vm.example carol@vm.example\n@catch.example carol@vm.example\ninfo root\n",
        );
        write("relayrcpt", "dave@relay.example ok\n");
        write("aliases.txt", "webmaster root\n");
        write("sql.cf", "hosts = 127.0.0.1\n");
        let main = format!(
            "compatibility_level = 3.6\n\
             mydestination = local.example\n\
             virtual_mailbox_domains = vm.example\n\
             virtual_alias_domains = catch.example\n\
             relay_domains = relay.example, cdb.example, sql.example\n\
             virtual_mailbox_maps = lmdb:{e}/vmailbox\n\
             virtual_alias_maps = hash:{e}/virtual\n\
             relay_recipient_maps = cdb:{e}/relayrcpt, inline:{{ eve@cdb.example=ok }}\n\
             alias_maps = texthash:{e}/aliases.txt\n\
             local_recipient_maps = proxy:unix:passwd.byname $alias_maps\n\
             recipient_delimiter = +\n",
            e = etc.display()
        );
        write("main.cf", &main);
        std::fs::copy("/etc/postfix/master.cf", etc.join("master.cf")).unwrap();
        for m in ["lmdb:vmailbox", "hash:virtual", "cdb:relayrcpt"] {
            let out = std::process::Command::new("postmap")
                .arg("-c")
                .arg(etc)
                .arg(m.replace(':', &format!(":{}/", etc.display())))
                .output()
                .unwrap();
            assert!(out.status.success(), "{m}: {out:?}");
        }
        let pf = Postfix::open(etc, Some("hash")).await.unwrap();
        let mine: Vec<Domain> = [
            "local.example",
            "vm.example",
            "catch.example",
            "relay.example",
            "cdb.example",
            "nowhere.example",
        ]
        .iter()
        .map(|s| d(s))
        .collect();
        let read = pf.recipients(&mine).await.unwrap();
        assert_eq!(read.delimiter, "+");
        let items: Vec<String> = read.items.iter().map(|r| r.to_string()).collect();
        for want in [
            "root@local.example",
            "info@local.example",
            "webmaster@local.example",
            "carol@vm.example",
            "carl@vm.example",
            "postmaster@vm.example",
            "@catch.example",
            "dave@relay.example",
            "eve@cdb.example",
        ] {
            assert!(items.iter().any(|i| i == want), "{want} missing: {items:?}");
        }
        assert!(!items
            .iter()
            .any(|i| i.ends_with("@else.example") || i.ends_with("@nowhere.example")));
        assert!(
            !items.iter().any(|i| i == "info@vm.example"),
            "bare keys are local only"
        );
        assert_eq!(read.unlisted.len(), 1, "{:?}", read.unlisted);
        assert!(read.unlisted[&d("nowhere.example")].contains("neither delivers nor relays"));

        // A table type that cannot be listed takes the list away from the
        // domains that depend on it, with the reason.
        let sql = main.replace(
            "relay_recipient_maps = cdb:",
            &format!(
                "relay_recipient_maps = mysql:{}/sql.cf, cdb:",
                etc.display()
            ),
        );
        write("main.cf", &sql);
        let read = pf.recipients(&mine).await.unwrap();
        for dom in ["relay.example", "cdb.example"] {
            assert!(
                read.unlisted[&d(dom)].contains("mysql tables cannot be listed"),
                "{:?}",
                read.unlisted
            );
        }
        assert!(
            read.items.iter().any(|r| r.as_str() == "carol@vm.example"),
            "others keep theirs"
        );
    }

    #[test]
    fn an_address_a_list_cannot_hold_takes_the_list_away() {
        let aliases = keys(&["\"odd user\"@q.example", "bob@q.example"]);
        let va = Class {
            virtual_alias: true,
            ..Class::default()
        };
        let why = recipients_of(&d("q.example"), va, &aliases, &None, &None, &None).unwrap_err();
        assert!(why.contains("cannot be published"), "{why}");
    }

    #[test]
    fn source_files_give_their_keys() {
        let text = "# comment\nBob@x.example  ok\n  continued line\n\n@x.example ok\nroot: admin\n";
        assert_eq!(source_keys(text), ["bob@x.example", "@x.example", "root"]);
    }
}

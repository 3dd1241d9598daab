//! Proof that a peer speaks for a domain, the explicit kind: the domain
//! publishes `_mxfed.<domain> TXT "v=mxfed1; id=<peer ID>"` naming the
//! peer ([`named_ids`] reads such records). The automatic kind, a next hop
//! at an address where the peer's key was seen, needs nothing from DNS but
//! the next hop's addresses; [`super::judge`] weighs both. Pure.

use mxfed_proto::domain::Domain;
use mxfed_proto::PeerId;

/// The version tag a record must start with.
const VERSION: &str = "mxfed1";

/// Where a domain's proof record lives.
pub(super) fn txt_name(domain: &Domain) -> String {
    format!("_mxfed.{domain}")
}

/// The record that names `id`, as an admin publishes it.
pub(super) fn record_for(id: &PeerId) -> String {
    format!("v={VERSION}; id={id}")
}

/// The peer IDs the TXT records at `_mxfed.<domain>` name, or `None` if
/// there is no `v=mxfed1` record (then the domain has not spoken). A record
/// counts only if its first tag is `v=mxfed1`; it may name several peers
/// with several `id=` tags, and an ID is read with or without its dashes.
/// Anything else (other records at the name, tags this version does not
/// know, IDs that do not parse) is skipped: a record whose IDs are all
/// broken names nobody, and so refuses everyone.
pub(super) fn named_ids(records: &[String]) -> Option<Vec<PeerId>> {
    let mut ids = Vec::new();
    let mut spoken = false;
    for record in records {
        let mut tags = record.split(';').map(str::trim).filter(|t| !t.is_empty());
        let Some(first) = tags.next() else { continue };
        match first.split_once('=') {
            Some((k, v))
                if k.trim().eq_ignore_ascii_case("v") && v.trim().eq_ignore_ascii_case(VERSION) => {
            }
            _ => continue,
        }
        spoken = true;
        for tag in tags {
            if let Some((k, v)) = tag.split_once('=') {
                if k.trim().eq_ignore_ascii_case("id") {
                    if let Ok(id) = v.trim().parse::<PeerId>() {
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
            }
        }
    }
    spoken.then_some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_public_key([n; 32])
    }

    #[test]
    fn a_record_names_peers_with_or_without_dashes() {
        let a = id(1);
        let b = id(2);
        let plain = a.to_string().replace('-', "").to_lowercase();
        assert_eq!(named_ids(&[record_for(&a)]), Some(vec![a]));
        assert_eq!(named_ids(&[format!("v=mxfed1;id={plain}")]), Some(vec![a]));
        assert_eq!(
            named_ids(&[format!("v=mxfed1; id={a}; id={b}")]),
            Some(vec![a, b]),
            "several IDs in one record"
        );
        assert_eq!(
            named_ids(&[record_for(&a), record_for(&b), record_for(&a)]),
            Some(vec![a, b]),
            "several records, each ID once"
        );
    }

    #[test]
    fn other_records_and_broken_tags_name_nobody() {
        let a = id(1);
        for other in [
            format!("id={a}"),
            format!("v=mxfed2; id={a}"),
            format!("v=spf1 id={a}"),
            format!("id={a}; v=mxfed1"),
            String::new(),
        ] {
            assert_eq!(named_ids(std::slice::from_ref(&other)), None, "{other:?}");
        }
        assert_eq!(named_ids(&[]), None, "no record: the domain has not spoken");
        for nobody in ["v=mxfed1; id=not-a-peer-id", "v=mxfed1"] {
            assert_eq!(
                named_ids(&[nobody.to_string()]),
                Some(vec![]),
                "a record naming nobody refuses everyone: {nobody:?}"
            );
        }
        assert_eq!(
            named_ids(&[format!("v=mxfed1; x=1; id={a}; y")]),
            Some(vec![a]),
            "unknown tags are skipped"
        );
        assert_eq!(
            txt_name(&Domain::parse("Friend.Example").unwrap()),
            "_mxfed.friend.example"
        );
    }
}

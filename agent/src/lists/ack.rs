//! The acknowledgement of a friend's list ([`ListAck`]): [`make_ack`] counts
//! what I made of its entries, with capped notes; [`check_ack`] checks one
//! from a friend about my list before it is stored. Pure.

use mxfed_proto::control::EntryState;
use mxfed_proto::domain::Domain;
use mxfed_proto::msg::{EntryNote, ListAck, MAX_ACK_NOTES, MAX_REASON};

use crate::store::HeldEntry;

/// Counts and notes for the signer.
pub(super) fn make_ack(version: u64, held: &[HeldEntry]) -> ListAck {
    let mut ack = ListAck {
        version,
        accepted: 0,
        refused_count: 0,
        pending_count: 0,
        refused: Vec::new(),
        pending: Vec::new(),
    };
    for h in held {
        let note = || EntryNote {
            domain: h.entry.domain.to_string(),
            reason: truncate(h.reason.as_deref().unwrap_or(""), MAX_REASON),
        };
        match h.state {
            EntryState::Accepted => ack.accepted += 1,
            EntryState::Refused => {
                ack.refused_count += 1;
                if ack.refused.len() < MAX_ACK_NOTES {
                    ack.refused.push(note());
                }
            }
            EntryState::Pending => {
                ack.pending_count += 1;
                if ack.pending.len() < MAX_ACK_NOTES {
                    ack.pending.push(note());
                }
            }
        }
    }
    ack
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Checks an acknowledgement from a peer before it is stored.
pub(super) fn check_ack(ack: &ListAck, my_version: u64) -> Result<(), String> {
    if ack.version > my_version {
        return Err(format!(
            "acknowledges version {} but mine is {my_version}",
            ack.version
        ));
    }
    if ack.refused.len() > MAX_ACK_NOTES || ack.pending.len() > MAX_ACK_NOTES {
        return Err("too many notes".into());
    }
    let total =
        u64::from(ack.accepted) + u64::from(ack.refused_count) + u64::from(ack.pending_count);
    if total > u64::from(mxfed_proto::list::MAX_ENTRIES) {
        return Err("counts over the list size limit".into());
    }
    for n in ack.refused.iter().chain(&ack.pending) {
        Domain::parse_canonical(&n.domain).map_err(|e| format!("note: {e}"))?;
        if n.reason.len() > MAX_REASON
            || !n.reason.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
        {
            return Err(format!(
                "note for {}: reason too long or not printable",
                n.domain
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lists::judge::tests::entry;

    #[test]
    fn acks_count_everything_and_cap_notes() {
        let mut held = Vec::new();
        for i in 0..1500 {
            held.push(HeldEntry {
                entry: entry(&format!("r{i}.example"), "mail.x.example"),
                state: EntryState::Refused,
                reason: Some("x".repeat(400)),
                addrs: Vec::new(),
            });
        }
        held.push(HeldEntry {
            entry: entry("a.example", "mail.x.example"),
            state: EntryState::Accepted,
            reason: None,
            addrs: Vec::new(),
        });
        let ack = make_ack(7, &held);
        assert_eq!(
            (ack.accepted, ack.refused_count, ack.pending_count),
            (1, 1500, 0)
        );
        assert_eq!(ack.refused.len(), MAX_ACK_NOTES);
        assert!(ack.refused.iter().all(|n| n.reason.len() <= MAX_REASON));
        assert!(check_ack(&ack, 7).is_ok());
        assert!(
            check_ack(&ack, 6).is_err(),
            "cannot acknowledge a version I never made"
        );
        let mut bad = ack.clone();
        bad.refused[0].domain = "evil.example\nOK".into();
        assert!(check_ack(&bad, 7).is_err());
    }
}

//! The acknowledgement of a friend's list ([`ListAck`]): [`make_ack`] counts
//! what I made of its entries, with capped notes; [`check_ack`] checks one
//! from a friend about my list before it is stored. Pure.

use mxfed_proto::domain::Domain;
use mxfed_proto::msg::{EntryNote, ListAck, MAX_ACK_NOTES, MAX_REASON};

use crate::store::ListSummary;

/// Counts and notes for the signer, from what the store says of its list.
pub(super) fn make_ack(version: u64, held: &ListSummary) -> ListAck {
    let notes = |n: &[(String, String)]| -> Vec<EntryNote> {
        n.iter()
            .take(MAX_ACK_NOTES)
            .map(|(domain, reason)| EntryNote {
                domain: domain.clone(),
                reason: truncate(reason, MAX_REASON),
            })
            .collect()
    };
    ListAck {
        version,
        accepted: held.accepted,
        refused_count: held.refused,
        pending_count: held.pending,
        refused: notes(&held.refused_notes),
        pending: notes(&held.pending_notes),
    }
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

    #[test]
    fn acks_count_everything_and_cap_notes() {
        let held = ListSummary {
            accepted: 1,
            refused: 1500,
            pending: 0,
            refused_notes: (0..1500)
                .map(|i| (format!("r{i}.example"), "x".repeat(400)))
                .collect(),
            pending_notes: Vec::new(),
        };
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

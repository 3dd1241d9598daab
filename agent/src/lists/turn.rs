//! Taking a bounded share of a long list in turn ([`take_in_turn`]), so
//! re-checks cover every entry over rounds with bounded work per round. Pure.

/// Up to `budget` of `items`, in order of `key`, starting after the key
/// `after` (where the previous turn ended) and going round; and the key of
/// the last one taken, for the next turn (`None` when all fit). Resuming by
/// key, not position, means entries that come or go between turns do not
/// make others skip a turn.
pub(super) fn take_in_turn<T>(
    mut items: Vec<T>,
    after: Option<&str>,
    budget: usize,
    key: impl Fn(&T) -> &str,
) -> (Vec<T>, Option<String>) {
    if items.len() <= budget {
        return (items, None);
    }
    items.sort_by(|a, b| key(a).cmp(key(b)));
    let start = after.map_or(0, |after| items.partition_point(|t| key(t) <= after));
    let start = if start == items.len() { 0 } else { start };
    items.rotate_left(start);
    items.truncate(budget);
    let last = items.last().map(|t| key(t).to_string());
    (items, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rechecks_take_a_budget_in_turn_and_cover_everything() {
        let turn = |items: &[&'static str], after: Option<&str>, budget| {
            take_in_turn(items.to_vec(), after, budget, |s| s)
        };
        let items = ["d", "a", "c", "b", "e", "f", "g"];
        assert_eq!(
            turn(&items, Some("c"), 7),
            (items.to_vec(), None),
            "all fit"
        );
        let mut seen = Vec::new();
        let mut after = None;
        for _ in 0..3 {
            let (batch, last) = turn(&items, after.as_deref(), 3);
            assert_eq!(batch.len(), 3);
            seen.extend(batch);
            after = last;
        }
        assert_eq!(
            seen,
            ["a", "b", "c", "d", "e", "f", "g", "a", "b"],
            "in order, wrapping round"
        );
        // Entries that went away (c was accepted) or came (ca) since the last
        // turn do not make others skip theirs: the next turn starts after "c".
        assert_eq!(
            turn(&["a", "b", "ca", "d", "e"], Some("c"), 2),
            (vec!["ca", "d"], Some("d".to_string()))
        );
        // Past the end: back to the start.
        assert_eq!(
            turn(&["a", "b", "c"], Some("z"), 2),
            (vec!["a", "b"], Some("b".to_string()))
        );
    }
}

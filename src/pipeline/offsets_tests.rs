//! Properties of the offset book: the commit offset never passes an unfinished offset, and
//! what a revoked partition finishes later changes nothing.

use proptest::prelude::*;

use super::*;

#[test]
fn releases_only_the_contiguous_prefix() {
    let mut p = PartitionOffsets::default();
    assert_eq!(p.committable(), None);
    for o in 0..4 {
        assert!(p.seen(o));
    }
    p.done(1);
    p.done(2);
    assert_eq!(p.committable(), Some(0));
    p.done(0);
    assert_eq!(p.committable(), Some(3));
    p.done(3);
    assert_eq!(p.take_commit(), Some(4));
    assert_eq!(p.take_commit(), None);
}

#[test]
fn gaps_do_not_stall() {
    let mut p = PartitionOffsets::default();
    for o in [10, 11, 15, 20] {
        p.seen(o);
    }
    for o in [20, 15, 11, 10] {
        p.done(o);
    }
    assert_eq!(p.committable(), Some(21));
}

#[test]
fn redelivered_offsets_are_not_tracked_twice() {
    let mut p = PartitionOffsets::default();
    assert!(p.seen(5));
    assert!(!p.seen(5));
    assert!(!p.seen(3));
    p.done(5);
    assert_eq!(p.committable(), Some(6));
}

#[test]
fn a_trailing_transaction_marker_does_not_hold_the_commit() {
    let mut p = PartitionOffsets::default();
    p.seen(10);
    p.seen(11);
    // Offset 12 is a commit marker: never delivered, but the position passes it.
    p.advance(13);
    assert_eq!(p.committable(), Some(10), "pending messages still hold it");
    p.done(10);
    p.done(11);
    assert_eq!(p.committable(), Some(13));
    // A stale position never moves it back, and later messages are still tracked.
    p.advance(12);
    assert_eq!(p.committable(), Some(13));
    assert!(p.seen(13));
    assert!(!p.seen(12), "below the position: already delivered");
}

#[test]
fn lag_is_measured_from_what_was_committed() {
    let mut p = PartitionOffsets::default();
    assert_eq!(p.lag_position(), None);
    p.seen(0);
    p.seen(1);
    // Before the first commit: where the assignment started, even once finished.
    p.done(0);
    assert_eq!(p.lag_position(), Some(0));
    assert_eq!(p.take_commit(), Some(1));
    p.confirm(1);
    p.done(1);
    // Finished but not yet committed: lag still counts it.
    assert_eq!(p.committable(), Some(2));
    assert_eq!(p.lag_position(), Some(1));
    // A late confirmation of an older commit does not move it back.
    p.confirm(2);
    p.confirm(1);
    assert_eq!(p.lag_position(), Some(2));
}

#[test]
fn revoked_partitions_ignore_late_completions() {
    let book = OffsetBook::default();
    let tp = TopicPartition::new("t", 0);
    book.assign(tp.clone());
    let old = book.register(&tp, 0).unwrap();
    book.revoke(&tp);
    assert!(book.register(&tp, 1).is_none());
    book.assign(tp.clone());
    let fresh = book.register(&tp, 7).unwrap();
    book.done(&old);
    assert!(
        book.take_commits(None).iter().all(|(_, o)| *o == 7),
        "old generation moved the offset"
    );
    book.done(&fresh);
    assert_eq!(book.take_commits(None), vec![(tp, 8)]);
}

#[test]
fn failed_commits_are_handed_out_again() {
    let book = OffsetBook::default();
    let tp = TopicPartition::new("t", 1);
    book.assign(tp.clone());
    let t = book.register(&tp, 0).unwrap();
    book.done(&t);
    assert_eq!(book.take_commits(None).len(), 1);
    assert!(book.take_commits(None).is_empty());
    book.commit_failed(std::slice::from_ref(&tp));
    assert_eq!(
        book.take_commits(Some(std::slice::from_ref(&tp))),
        vec![(tp, 1)]
    );
}

proptest! {
    /// Whatever the gaps and completion order, the commit offset is exactly one past the
    /// longest finished prefix of the delivered offsets, and never moves backwards.
    #[test]
    fn commit_offset_is_the_finished_prefix(
        gaps in prop::collection::vec(1i64..4, 1..60),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..80),
    ) {
        let mut offsets = Vec::new();
        let mut o = 0;
        for g in gaps { o += g; offsets.push(o); }
        let mut p = PartitionOffsets::default();
        for o in &offsets { p.seen(*o); }
        let mut open: Vec<i64> = offsets.clone();
        let mut finished = BTreeSet::new();
        let mut last = None;
        for idx in order {
            if open.is_empty() { break; }
            let o = open.remove(idx.index(open.len()));
            p.done(o);
            finished.insert(o);
            let expect = offsets.iter().find(|o| !finished.contains(o)).copied()
                .unwrap_or(offsets[offsets.len() - 1] + 1);
            prop_assert_eq!(p.committable(), Some(expect));
            if let Some(c) = p.take_commit() {
                prop_assert!(last.is_none_or(|l| c > l));
                last = Some(c);
            }
        }
    }
}

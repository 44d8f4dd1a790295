//! The screens of `top` at 80x24, drawn on ratatui's test backend and compared with the
//! snapshots in `snapshots/` (`UPDATE_SNAPSHOTS=1 cargo test --lib top::` writes them).

use std::collections::BTreeMap;

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::view;
use super::{Board, View};
use crate::status::{Budget, HaltedProject, Partition, Status};

const T0: u64 = 1_764_720_000_000;

fn status(at_ms: u64, events: u64, lag: i64) -> Status {
    Status {
        version: "0.1.0".into(),
        revision: "abc123".into(),
        at_ms,
        ready: true,
        events_total: events,
        annotated_total: events - events / 50,
        dead_letters_total: BTreeMap::from([("decode".to_owned(), events / 50)]),
        in_flight: 37,
        in_flight_limit: 64,
        parked: 2,
        budget: Budget {
            rate: 200,
            burst: 20,
            granted_total: events,
            ..Budget::default()
        },
        partitions: vec![Partition {
            topic: "logins".into(),
            partition: 0,
            committed: 1_000 + i64::try_from(events).unwrap(),
            lag,
            end: 1_000 + i64::try_from(events).unwrap() + lag,
        }],
        ..Status::default()
    }
}

fn screen(board: &Board) -> String {
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal.draw(|f| view::draw(f, board)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut text = String::new();
    for y in 0..buffer.area.height {
        let line: String = (0..buffer.area.width)
            .map(|x| buffer[(x, y)].symbol().to_owned())
            .collect();
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn check(name: &str, board: &Board) {
    let shown = screen(board);
    let path = format!(
        "{}/src/commands/top/snapshots/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &shown).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        shown, expected,
        "{name}: the screen differs from {path}:\n{shown}"
    );
}

fn two_members() -> Board {
    let mut board = Board::new(vec!["10.0.0.1:9464".into(), "10.0.0.2:9464".into()]);
    board.update(0, Ok(status(T0, 1_000, 40)));
    board.update(1, Ok(status(T0, 2_000, 10)));
    board.update(0, Ok(status(T0 + 1_000, 1_150, 30)));
    board.update(1, Ok(status(T0 + 1_000, 2_180, 5)));
    board
}

#[test]
fn a_healthy_group() {
    check("healthy", &two_members());
}

#[test]
fn a_halted_project() {
    let mut board = two_members();
    let mut s = status(T0 + 2_000, 1_200, 30);
    s.halted_projects = vec![HaltedProject {
        project: "222".into(),
        reason: "PERMISSION_DENIED: IAM_PERMISSION_DENIED (events wait; one probe every 30s)"
            .into(),
        since_ms: T0 - 300_000,
    }];
    s.notes = vec!["project 222 halted".into()];
    board.update(0, Ok(s));
    check("halted-project", &board);
}

#[test]
fn a_member_that_went_away() {
    let mut board = two_members();
    board.update(1, Err("unreachable".into()));
    let mut s = status(T0 + 2_000, 1_300, 30);
    s.ready = false;
    s.reasons = vec!["halted: HTTP 401: API key not valid".into()];
    board.update(0, Ok(s));
    check("member-gone", &board);
}

#[test]
fn a_backlog_draining() {
    let mut board = Board::new(vec!["10.0.0.1:9464".into()]);
    for (i, lag) in [90_000, 80_000, 64_000, 50_000, 31_000, 12_000, 900]
        .iter()
        .enumerate()
    {
        let mut s = status(T0 + 1_000 * i as u64, 10_000 * i as u64 + 100, *lag);
        s.partitions.push(Partition {
            topic: "fraud-signals".into(),
            partition: 3,
            committed: 500,
            lag: lag / 10,
            end: 500 + lag / 10,
        });
        board.update(0, Ok(s));
    }
    board.view = View::Partitions;
    board.next_sort();
    check("backlog-draining", &board);
}

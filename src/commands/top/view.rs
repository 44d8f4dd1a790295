//! Drawing the board: readable at 80x24 (over SSH), no colour needed to read it.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, Wrap};

use super::board::{Board, Member, Sort, View};
use crate::status::{Status, ago};

pub fn draw(frame: &mut Frame<'_>, board: &Board) {
    let [title, body] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(frame.area());
    let up = board
        .members
        .iter()
        .filter(|m| m.error.is_none() && m.last.is_some())
        .count();
    let ready = board
        .members
        .iter()
        .filter(|m| m.error.is_none() && m.last.as_ref().is_some_and(|s| s.ready))
        .count();
    let heading = format!(
        "annotator top | {} member{}, {up} answer, {ready} ready | {} by {} | tab s q",
        board.members.len(),
        if board.members.len() == 1 { "" } else { "s" },
        match board.view {
            View::Members => "members",
            View::Partitions => "partitions",
        },
        match board.sort {
            Sort::Name => "name",
            Sort::Lag => "lag",
        }
    );
    frame.render_widget(
        Paragraph::new(heading).style(Style::default().add_modifier(Modifier::REVERSED)),
        title,
    );
    match board.view {
        View::Members => members(frame, body, board),
        View::Partitions => partitions(frame, body, board),
    }
}

fn members(frame: &mut Frame<'_>, area: ratatui::layout::Rect, board: &Board) {
    let mut order: Vec<&Member> = board.members.iter().collect();
    if board.sort == Sort::Lag {
        order.sort_by_key(|m| std::cmp::Reverse(total_lag(m.last.as_ref())));
    }
    let rows: Vec<Row<'_>> = order.iter().map(|m| member_row(m)).collect();
    let height = u16::try_from(rows.len())
        .unwrap_or(u16::MAX)
        .saturating_add(3);
    let [table, why] =
        Layout::vertical([Constraint::Length(height), Constraint::Min(0)]).areas(area);
    let widths = [
        Constraint::Length(16),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(6),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(
                Row::new([
                    "member", "state", "in/s", "out/s", "dl/s", "flight", "budget/s", "parked",
                ])
                .style(Style::default().add_modifier(Modifier::BOLD)),
            )
            .block(Block::default().borders(Borders::TOP | Borders::BOTTOM)),
        table,
    );
    frame.render_widget(
        Paragraph::new(reasons(&order))
            .wrap(Wrap { trim: false })
            .block(Block::default().title("why")),
        why,
    );
}

fn member_row<'a>(m: &Member) -> Row<'a> {
    let name = m.admin.clone();
    let Some(s) = &m.last else {
        let state = if m.error.is_some() { "unreach." } else { "..." };
        return Row::new(vec![name, state.to_owned()]);
    };
    let state = if m.error.is_some() {
        "unreach."
    } else if s.ready {
        "ready"
    } else {
        "not ready"
    };
    let r = &m.rates;
    Row::new(vec![
        name,
        state.to_owned(),
        format!("{:.0}", r.events_in),
        format!("{:.0}", r.annotated),
        format!("{:.1}", r.dead_letters),
        format!("{}/{}", s.in_flight, s.in_flight_limit),
        if s.budget.rate == 0 {
            format!("{:.0}/-", r.granted)
        } else {
            format!("{:.0}/{}", r.granted, s.budget.rate)
        },
        s.parked.to_string(),
    ])
}

/// Why members are not ready or held back, one line each.
fn reasons<'a>(order: &[&Member]) -> Vec<Line<'a>> {
    let mut lines = Vec::new();
    for m in order {
        let who = &m.admin;
        if let Some(error) = &m.error {
            let last = m
                .last
                .as_ref()
                .map_or(String::new(), |_| ", showing its last answer".to_owned());
            lines.push(Line::from(format!("{who}: {error}{last}")));
        }
        let Some(s) = &m.last else { continue };
        for reason in &s.reasons {
            lines.push(Line::from(format!("{who}: {reason}")));
        }
        for p in &s.halted_projects {
            lines.push(Line::from(format!(
                "{who}: project {} halted {}: {}",
                p.project,
                ago(s.at_ms, p.since_ms),
                p.reason
            )));
        }
        if s.budget.fallback {
            lines.push(Line::from(format!(
                "{who}: budget: Redis unreachable, spending this member's share"
            )));
        }
        let dead: Vec<String> = s
            .dead_letters_total
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        if !dead.is_empty() {
            lines.push(Line::from(format!(
                "{who}: dead letters: {}",
                dead.join(", ")
            )));
        }
    }
    if lines.is_empty() {
        lines.push(Line::from("nothing held back"));
    }
    lines
}

fn partitions(frame: &mut Frame<'_>, area: ratatui::layout::Rect, board: &Board) {
    let mut rows: Vec<(String, i64, i64, i64)> = board
        .members
        .iter()
        .filter_map(|m| m.last.as_ref())
        .flat_map(|s| s.partitions.iter())
        .map(|p| {
            (
                format!("{}/{}", p.topic, p.partition),
                p.lag,
                p.committed,
                p.end,
            )
        })
        .collect();
    match board.sort {
        Sort::Name => rows.sort(),
        Sort::Lag => rows.sort_by_key(|r| std::cmp::Reverse(r.1)),
    }
    // Long topic names keep their end (the topic's own name and the partition).
    let room = usize::from(area.width.saturating_sub(12 + 8 + 17 + 3)).max(12);
    let table: Vec<Row<'_>> = rows
        .into_iter()
        .map(|(name, lag, committed, end)| {
            let spark = board
                .lag
                .get(&name)
                .map_or(String::new(), |h| sparkline(h, 12));
            Row::new(vec![
                keep_end(&name, room),
                spark,
                lag.to_string(),
                format!("{committed}/{end}"),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(u16::try_from(room).unwrap_or(u16::MAX)),
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Length(17),
    ];
    frame.render_widget(
        Table::new(table, widths)
            .header(
                Row::new(["partition", "lag, 1 min", "lag", "committed/end"])
                    .style(Style::default().add_modifier(Modifier::BOLD)),
            )
            .block(Block::default().borders(Borders::TOP)),
        area,
    );
}

/// The last `width` samples as block characters, scaled to their largest.
pub fn sparkline(history: &std::collections::VecDeque<u64>, width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let start = history.len().saturating_sub(width);
    let shown: Vec<u64> = history.iter().skip(start).copied().collect();
    let top = shown.iter().copied().max().unwrap_or(0).max(1);
    shown
        .iter()
        .map(|v| {
            let step = usize::try_from(v.saturating_mul(7) / top).unwrap_or(7);
            BARS[step.min(7)]
        })
        .collect()
}

/// `text` cut to its last `width` characters behind a `…`.
fn keep_end(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(count - width + 1).collect();
    format!("…{tail}")
}

fn total_lag(s: Option<&Status>) -> i64 {
    s.map_or(0, |s| s.partitions.iter().map(|p| p.lag).sum())
}

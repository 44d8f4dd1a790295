//! `recaptcha-annotator top --admin HOST:PORT [--admin ...]`: a terminal view of one or more
//! members, refreshed every second from their `/status.json` (never from Kafka). A member
//! that stops answering is shown as unreachable with its last known state; the view goes on.
//! Keys: `tab` switches between members and partitions, `s` changes the sort, `q` quits.

mod board;
mod view;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use self::board::{Board, Sort, View};
use crate::status::Status;

/// How often the members are asked.
const REFRESH: Duration = Duration::from_secs(1);

/// Runs the view until `q` (or Ctrl-C).
pub async fn main(admins: Vec<String>) -> anyhow::Result<()> {
    let board = Arc::new(Mutex::new(Board::new(admins.clone())));
    let client = reqwest::Client::builder()
        .timeout(REFRESH.mul_f32(0.8))
        .build()?;
    let poller = {
        let board = Arc::clone(&board);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tick.tick().await;
                let answers =
                    futures::future::join_all(admins.iter().map(|a| fetch(&client, a))).await;
                let mut board = board
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (i, answer) in answers.into_iter().enumerate() {
                    board.update(i, answer);
                }
            }
        })
    };
    let shown = tokio::task::spawn_blocking(move || interact(&board)).await?;
    poller.abort();
    shown
}

async fn fetch(client: &reqwest::Client, admin: &str) -> Result<Status, String> {
    let url = format!("http://{admin}/status.json");
    let answer = client.get(&url).send().await.map_err(|e| {
        if e.is_timeout() {
            "no answer".to_owned()
        } else {
            "unreachable".to_owned()
        }
    })?;
    if !answer.status().is_success() {
        return Err(format!("HTTP {}", answer.status().as_u16()));
    }
    answer
        .json::<Status>()
        .await
        .map_err(|_| "not a status (an older version?)".to_owned())
}

/// Draws and reads keys until `q`.
fn interact(board: &Mutex<Board>) -> anyhow::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        loop {
            {
                let board = board
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                terminal.draw(|frame| view::draw(frame, &board))?;
            }
            if !event::poll(Duration::from_millis(250))? {
                continue;
            }
            if let Event::Key(key) = event::read()?
                && key.kind == KeyEventKind::Press
            {
                let mut board = board
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Tab => board.switch_view(),
                    KeyCode::Char('s') => board.next_sort(),
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests;

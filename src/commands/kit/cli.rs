//! The command lines of `validate` and `publish`.

use std::path::PathBuf;

use super::{Contract, PublishArgs};
use crate::config::Config;
use crate::telemetry::{self, LogFormat};

/// `validate`'s arguments (the help text is on the subcommand).
#[derive(Debug, clap::Args)]
pub struct ValidateCommand {
    /// TOML config (or ANNOTATOR_CONFIG); every key can be overridden by
    /// ANNOTATOR__SECTION__KEY.
    #[arg(long, short, env = "ANNOTATOR_CONFIG")]
    config: Option<PathBuf>,
    /// The topic: its Kafka name or assessments, logins, registrations, fraud-signals. It
    /// decides the outcome vocabulary.
    #[arg(long)]
    topic: String,
    /// Check this JSON Lines file (one value per line) instead of reading the topic.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Only the last N records of each partition.
    #[arg(long, conflicts_with = "file")]
    last: Option<i64>,
}

/// `publish`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PublishCommand {
    /// TOML config (or ANNOTATOR_CONFIG); every key can be overridden by
    /// ANNOTATOR__SECTION__KEY.
    #[arg(long, short, env = "ANNOTATOR_CONFIG")]
    config: Option<PathBuf>,
    /// The topic: its Kafka name or assessments, logins, registrations, fraud-signals.
    #[arg(long)]
    topic: String,
    /// JSON Lines (one value per line) or CSV (a header line; `.csv` or --csv).
    #[arg(long)]
    file: PathBuf,
    /// Read the file as CSV whatever its name.
    #[arg(long)]
    csv: bool,
    /// CSV column for an event field, FIELD=COLUMN (repeatable; dotted fields for nested
    /// ones: transaction.value=amount; reasons split on | or ;). Without it, the header
    /// names are the fields.
    #[arg(long = "map", value_name = "FIELD=COLUMN", value_parser = field_pair)]
    map: Vec<(String, String)>,
    /// A field every CSV record gets, FIELD=VALUE (repeatable): `outcome=chargeback` for
    /// an export of chargebacks.
    #[arg(long = "set", value_name = "FIELD=VALUE", value_parser = field_pair)]
    set: Vec<(String, String)>,
    /// Skip this many data lines (a re-run: the last line acknowledged).
    #[arg(long, default_value_t = 0)]
    skip: u64,
    /// At most this many data lines after the skipped ones.
    #[arg(long)]
    limit: Option<u64>,
    /// Where rejected lines are written (default <file>.rejected.jsonl).
    #[arg(long)]
    rejected: Option<PathBuf>,
    /// Seconds a record may wait for the broker's acknowledgement before publish stops
    /// and names the last line acknowledged.
    #[arg(long, default_value_t = 30)]
    delivery_timeout: u64,
}

/// The config, logging, and the contract of `topic`.
fn setup(
    path: Option<&std::path::Path>,
    topic: &str,
    log_format: Option<LogFormat>,
) -> anyhow::Result<(Config, Contract)> {
    let config = Config::load(path)?;
    telemetry::init_logging(log_format.unwrap_or(config.log.format), "warn");
    let contract = Contract::new(&config, topic)?;
    Ok((config, contract))
}

/// `FIELD=...` of `publish --map` and `--set`.
fn field_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(f, v)| (f.trim().to_owned(), v.trim().to_owned()))
        .filter(|(f, _)| !f.is_empty())
        .ok_or_else(|| format!("{text:?}: expected FIELD=..."))
}

impl ValidateCommand {
    /// Fails when any record fails.
    pub fn run(self, log_format: Option<LogFormat>) -> anyhow::Result<()> {
        let (config, contract) = setup(self.config.as_deref(), &self.topic, log_format)?;
        let ok = match self.file {
            Some(file) => super::validate_file(&contract, &file)?,
            None => tokio::task::block_in_place(|| {
                super::validate_topic(&config, &contract, self.last)
            })?,
        };
        anyhow::ensure!(ok, "some records do not satisfy the contract (see above)");
        Ok(())
    }
}

impl PublishCommand {
    pub async fn run(self, log_format: Option<LogFormat>) -> anyhow::Result<()> {
        let (config, contract) = setup(self.config.as_deref(), &self.topic, log_format)?;
        let args = PublishArgs {
            file: self.file,
            csv: self.csv,
            map: self.map,
            set: self.set,
            skip: self.skip,
            limit: self.limit,
            rejected: self.rejected,
            delivery_timeout: std::time::Duration::from_secs(self.delivery_timeout),
        };
        super::publish(&config, &contract, &args).await.map(|_| ())
    }
}

//! Command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::commands::{self, bench, check, demo, replay};
use crate::config::Config;
use crate::telemetry::{self, LogFormat};
use crate::{app, sandbox};

#[derive(Debug, Parser)]
#[command(
    name = "recaptcha-annotator",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ANNOTATOR_REVISION"), ")"),
    about = "Kafka outcome events -> reCAPTCHA Enterprise annotations",
    after_help = "Exit codes: 0 done; 1 the command failed (a run that stopped on an error, a failed check); 2 the command line is wrong; 78 the config is wrong (EX_CONFIG: a file that does not parse, a value the validation refuses)."
)]
pub struct Cli {
    /// Log format (overrides `log.format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Run {
        /// TOML config (or ANNOTATOR_CONFIG); every key can be overridden by
        /// ANNOTATOR__SECTION__KEY.
        #[arg(long, short, env = "ANNOTATOR_CONFIG")]
        config: Option<PathBuf>,
        /// Decide and log every annotation, call nothing; commits as the consumer group
        /// `<kafka.group_id>-dry-run` (or --group), never as the real group.
        #[arg(long)]
        dry_run: bool,
        /// The consumer group of a dry run (default `<kafka.group_id>-dry-run`); never the
        /// real one. Only with --dry-run.
        #[arg(long, requires = "dry_run")]
        group: Option<String>,
    },
    /// A live view of members in a terminal, from their admin ports' /status.json: readiness
    /// and why, events in and annotations out, dead letters, calls in flight against the
    /// limit, the budget, halted projects, parked joins, each partition's lag. Keys: tab
    /// switches view, s sorts, q quits.
    Top {
        /// A member's admin address (host:port); repeat for each member.
        #[arg(long = "admin", required = true)]
        admins: Vec<String>,
    },
    /// Print a shell's completion script (bash: `source <(recaptcha-annotator completions
    /// bash)`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Serve a local annotate endpoint that behaves like Google's.
    Sandbox {
        #[arg(long, default_value = "127.0.0.1:8085")]
        listen: String,
        /// The only API key accepted (others get 400 API_KEY_INVALID); any when unset.
        #[arg(long, env = "SANDBOX_API_KEY")]
        api_key: Option<String>,
        /// Added latency of every answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// How many accepted requests are kept for GET /sandbox/requests.
        #[arg(long, default_value_t = 100_000)]
        record_limit: usize,
        /// Answer as Google does: 404 NOT_FOUND for an assessment this sandbox never created
        /// (POST /v1/projects/{p}/assessments creates one), 403 PERMISSION_DENIED for a
        /// project not given with --project.
        #[arg(long)]
        strict: bool,
        /// A project the key owns (strict mode); repeatable.
        #[arg(long = "project")]
        projects: Vec<String>,
        /// Annotate calls per second each project may make, as Google's quota: above it,
        /// 429 RESOURCE_EXHAUSTED. No quota when unset.
        #[arg(long)]
        quota: Option<u32>,
        /// Verify bearer tokens, trusting the service account whose public key (PEM,
        /// `openssl pkey -in key.pem -pubout`) is in FILE: its self-signed JWTs must carry a
        /// valid signature, the cloud-platform scope and a live expiry, as Google checks
        /// them (401 UNAUTHENTICATED otherwise). Repeatable.
        #[arg(long = "trust-service-account", value_name = "FILE")]
        trust_service_accounts: Vec<std::path::PathBuf>,
        /// Verify bearer tokens: accept only the ones this sandbox issued (POST /token, the
        /// metadata server's token path) and trusted service accounts' JWTs.
        #[arg(long)]
        verify_tokens: bool,
        /// Lifetime of the tokens the sandbox issues, in seconds.
        #[arg(long, default_value_t = 3600)]
        token_lifetime: u64,
    },
    /// Validate the config, reach the broker, the cache and the endpoint, prove the
    /// credentials with one annotate call (see --offline), and print the effective config
    /// with secrets redacted. Changes nothing on disk. Exits non-zero naming what failed.
    Check {
        /// TOML config (or ANNOTATOR_CONFIG); every key can be overridden by
        /// ANNOTATOR__SECTION__KEY.
        #[arg(long, short, env = "ANNOTATOR_CONFIG")]
        config: Option<PathBuf>,
        /// Skip the credentials probe (one annotate call for an assessment that cannot
        /// exist, which costs one request of the project's quota).
        #[arg(long)]
        offline: bool,
    },
    /// Work with the dead-letter topic.
    DeadLetter {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// Create the configured topics (consumed ones and the dead-letter topic).
    CreateTopics {
        /// TOML config (or ANNOTATOR_CONFIG); every key can be overridden by
        /// ANNOTATOR__SECTION__KEY.
        #[arg(long, short, env = "ANNOTATOR_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        partitions: i32,
    },
    /// Benchmark: backlog into the local broker, the service as a child process, the
    /// sandbox with a chosen latency; prints events/s, latency, CPU and peak RSS.
    Bench {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        #[arg(long, default_value_t = 1024)]
        max_in_flight: usize,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Skip the max_in_flight = 1 baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Stall the endpoint and report peak RSS with the backlog (runs 30 s).
        #[arg(long)]
        stalled: bool,
        /// Outcomes reference their assessment by key, joined through the cache.
        #[arg(long)]
        join: bool,
        /// Cache backend of the service: memory, embedded or redis.
        #[arg(long, default_value = "memory")]
        backend: String,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// delivery.max_pending (the service default when not given).
        #[arg(long)]
        max_pending: Option<usize>,
        /// Talk HTTP/1.1 to the sandbox instead of HTTP/2.
        #[arg(long)]
        http1: bool,
        /// delivery.rate_limit: drain the backlog within this budget and report the drain
        /// time, the endpoint's busiest second and the limiter's cost per call (use
        /// --backend redis for the group's shared budget).
        #[arg(long, default_value_t = 0)]
        rate_limit: u32,
        /// Then run another implementation on the same workload and print both figures and
        /// their ratio: a command that takes the service's command line (`run --config
        /// FILE`), e.g. ".tools/peers/bin/python ../shared/peers/peer_async.py" (Python
        /// peers speak HTTP/1.1: add --http1). A module `harness` with the rules is put on
        /// its PYTHONPATH.
        #[arg(long)]
        service_cmd: Option<String>,
    },
    /// Print the JSON Schemas (draft 2020-12) of the events each topic takes, with the
    /// outcome vocabulary of the config's rules (or write them into --out).
    Schemas {
        /// TOML config (or ANNOTATOR_CONFIG); every key can be overridden by
        /// ANNOTATOR__SECTION__KEY.
        #[arg(long, short, env = "ANNOTATOR_CONFIG")]
        config: Option<PathBuf>,
        /// Write one file per topic into this directory instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check records against the contract, as the service would take them: a topic (from
    /// the beginning, or the last --last records of each partition; a plain reader outside
    /// any consumer group, committing nothing) or a JSON Lines file (--file). Prints each
    /// record's verdict and a summary by reason; fails if any record fails.
    Validate(commands::kit::cli::ValidateCommand),
    /// Validate a JSON Lines or CSV file and produce its good records to a topic, in order,
    /// with an idempotent producer; rejected lines go to a file with their reasons. The
    /// message key is the record's `key`, else its assessment id. After an error it names
    /// the last line the broker acknowledged: re-run with --skip that number.
    Publish(commands::kit::cli::PublishCommand),
    /// End-to-end demo on local defaults: sandbox endpoint, fresh topics, sample events for
    /// every rule, the service running until all of them are committed.
    Demo {
        /// TOML config (or ANNOTATOR_CONFIG); every key can be overridden by
        /// ANNOTATOR__SECTION__KEY.
        #[arg(long, short, env = "ANNOTATOR_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// Re-publish dead-lettered events to their source topic (after a rule, a mapping or a
    /// permission was fixed). Progress is kept in a consumer group per filter (see --group):
    /// the same command never replays a record twice, but two runs with different filters
    /// (or groups) each replay what they match.
    Replay {
        /// TOML config (or ANNOTATOR_CONFIG); every key can be overridden by
        /// ANNOTATOR__SECTION__KEY.
        #[arg(long, short, env = "ANNOTATOR_CONFIG")]
        config: Option<PathBuf>,
        /// Only this reason (decode, unknown_outcome, invalid_reference, unjoined, rejected,
        /// forbidden);
        /// repeatable. All reasons when not given.
        #[arg(long = "reason")]
        reasons: Vec<String>,
        /// Only records dead-lettered at or after this time: a date (2026-11-25, midnight UTC)
        /// or an RFC 3339 time (2026-11-25T08:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only records dead-lettered before this time (a date or an RFC 3339 time).
        #[arg(long)]
        until: Option<String>,
        /// Consumer group that remembers what was replayed (default:
        /// `<kafka.group_id>-replay[-<reasons>][-since-<t>][-until-<t>]`: one per filter).
        #[arg(long)]
        group: Option<String>,
        /// Records already replayed this many times are left alone.
        #[arg(long, default_value_t = 3)]
        max_replays: u32,
        /// Count only; publish and commit nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// Exit code of a wrong config (`EX_CONFIG` of sysexits.h), apart from a run that failed (1)
/// and a wrong command line (2, clap's).
pub const EXIT_CONFIG: u8 = 78;

/// The exit code of a command that ended with `error`.
fn exit_code(error: &anyhow::Error) -> ExitCode {
    if error
        .chain()
        .any(|cause| cause.downcast_ref::<crate::config::ConfigError>().is_some())
    {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            dry_run,
            group,
        } => serve(cli.log_format, config.as_deref(), dry_run, group),
        command => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(dispatch(cli.log_format, command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    }
}

/// `run`: the config is read before the runtime is built, since it sizes it
/// (`delivery.worker_threads`).
fn serve(
    log_format: Option<LogFormat>,
    config: Option<&std::path::Path>,
    dry_run: bool,
    group: Option<String>,
) -> anyhow::Result<()> {
    let mut config = load(config)?;
    config.dry_run |= dry_run;
    config.dry_run_group = group;
    config
        .consumer_group()
        .map_err(|e| crate::config::ConfigError::Invalid(vec![e]))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // 0 is refused by the config's validation in `app::run`, with the key's name.
        .worker_threads(config.delivery.worker_threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        telemetry::init_logging(log_format.unwrap_or(config.log.format), &config.log.level);
        // On a worker, not on this thread: the intake loop and the event tasks it spawns
        // then share the workers, and a spawn does not wake another thread.
        tokio::spawn(app::run(config, app::shutdown_on_signals())).await?
    })
}

/// Every command but `run`, on Tokio's default runtime.
async fn dispatch(log_format: Option<LogFormat>, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { .. } => unreachable!("`run` is served by `serve`"),
        Command::Sandbox {
            listen,
            api_key,
            latency_ms,
            record_limit,
            strict,
            projects,
            quota,
            trust_service_accounts,
            verify_tokens,
            token_lifetime,
        } => {
            telemetry::init_logging(log_format.unwrap_or(LogFormat::Text), "info");
            let mut sandbox = sandbox::Sandbox::new(api_key, record_limit);
            if strict {
                sandbox = sandbox.strict(projects);
            }
            for path in &trust_service_accounts {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("--trust-service-account {}", path.display()))?;
                sandbox.trust_service_account(&pem).map_err(|e| {
                    anyhow::anyhow!("--trust-service-account {}: {e}", path.display())
                })?;
            }
            if verify_tokens {
                sandbox.identity().verify();
            }
            sandbox.identity().set_lifetime(token_lifetime);
            sandbox.set_script(sandbox::Script {
                responses: vec![],
                forbidden: None,
                quota,
                default: Some(sandbox::DefaultAnswer {
                    delay_ms: latency_ms,
                    ..Default::default()
                }),
            });
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            tracing::info!(listen = %listener.local_addr()?, "sandbox annotate endpoint listening");
            sandbox::serve(listener, sandbox).await?;
            Ok(())
        }
        Command::Top { admins } => commands::top::main(admins).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(
                shell,
                &mut command,
                "recaptcha-annotator",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Check { config, offline } => check::main(&load(config.as_deref())?, offline).await,
        Command::DeadLetter {
            command:
                DeadLetterCommand::Replay {
                    config,
                    reasons,
                    since,
                    until,
                    group,
                    max_replays,
                    dry_run,
                },
        } => {
            let config = load(config.as_deref())?;
            telemetry::init_logging(log_format.unwrap_or(config.log.format), "warn");
            let flags = replay::ReplayFlags {
                reasons,
                since,
                until,
                group,
                max_replays,
                dry_run,
            };
            replay::main(&config, flags).await
        }
        Command::CreateTopics { config, partitions } => {
            commands::create_topics(&load(config.as_deref())?, partitions).await
        }
        Command::Bench {
            brokers,
            events,
            latency_ms,
            max_in_flight,
            partitions,
            no_baseline,
            stalled,
            join,
            backend,
            redis_url,
            max_pending,
            http1,
            rate_limit,
            service_cmd,
        } => {
            telemetry::init_logging(log_format.unwrap_or(LogFormat::Text), "warn");
            let args = bench::BenchArgs {
                brokers,
                events,
                latency_ms,
                max_in_flight,
                partitions,
                time_limit: std::time::Duration::from_secs(if stalled { 30 } else { 600 }),
                stalled,
                join,
                backend,
                redis_url,
                max_pending,
                http2: !http1,
                rate_limit,
                service_cmd,
            };
            bench::run(args, !no_baseline).await
        }
        Command::Schemas { config, out } => {
            commands::kit::schemas(&load(config.as_deref())?, out.as_deref())
        }
        Command::Validate(command) => command.run(log_format),
        Command::Publish(command) => command.run(log_format).await,
        Command::Demo { config } => {
            let config = load(config.as_deref())?;
            telemetry::init_logging(log_format.unwrap_or(config.log.format), "warn");
            demo::run(config).await
        }
    }
}

//! The `halite` command: parse the command line, load the master config,
//! start a Tokio runtime and hand over to [`halite::serve`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use halite::settings::{self, Overrides};
use salt_client::config::MasterConfig;

/// Command line. Flags override the master config.
#[derive(Debug, Parser)]
#[command(
    name = "halite",
    version,
    about = "A REST API for Salt masters (a drop-in salt-api replacement)"
)]
struct Cli {
    /// Master config file (default: $SALT_MASTER_CONFIG, then /etc/salt/master).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Address to bind the rest_wsgi surface to (overrides rest_wsgi.host).
    #[arg(long)]
    host: Option<String>,
    /// Port of the rest_wsgi surface (overrides rest_wsgi.port).
    #[arg(long)]
    port: Option<u16>,
    /// TLS certificate (PEM) for the rest_wsgi surface (overrides rest_wsgi.ssl_crt).
    #[arg(long)]
    ssl_crt: Option<PathBuf>,
    /// TLS private key (PEM) for the rest_wsgi surface (overrides rest_wsgi.ssl_key).
    #[arg(long)]
    ssl_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "HALITE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Explain what halite would serve with this config, and what is wrong with it.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_flush = init_tracing(cli.log_format);
    let config = match MasterConfig::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("halite: cannot load the master config: {e}");
            return ExitCode::from(2);
        }
    };
    let overrides = Overrides {
        host: cli.host,
        port: cli.port,
        ssl_crt: cli.ssl_crt,
        ssl_key: cli.ssl_key,
    };
    let surfaces = match settings::surfaces(&config, &overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("halite: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        return settings::check_config(&config, &surfaces);
    }
    if surfaces.is_empty() {
        eprintln!(
            "halite: nothing to serve: {} has no rest_wsgi or rest_cherrypy section (add `rest_wsgi: {{port: 8001}}` or pass --port)",
            config.path().display()
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("halite: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(halite::serve(config, surfaces)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("halite: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr through a background writer (one write per line from
/// the request path cost a syscall per request); when the writer falls
/// behind it drops lines rather than stalling requests (a client that
/// floods the log must not slow everyone). The guard flushes at exit.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HALITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(4096)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

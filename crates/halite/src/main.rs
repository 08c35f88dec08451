//! The `halite` command: parse the command line, load the master config,
//! start a Tokio runtime and hand over to [`halite::serve`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use halite::settings::{self, Overrides};
use salt_client::config::MasterConfig;

/// `halite --version`: the version, the git revision it was built from, its
/// memory allocator and the Salt releases its tests run against.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("HALITE_GIT_REV"),
    "; allocator: ",
    env!("HALITE_ALLOCATOR"),
    "; tested with Salt 3006, 3007 and 3008, transports zeromq and tcp)"
);

const AFTER_HELP: &str = "\
Configuration:
  halite reads the Salt master config (and its master.d/*.conf includes) and
  serves each of its rest_wsgi and rest_cherrypy sections; see
  /usr/share/doc/halite/OPERATIONS.md for every option and its default.

Environment:
  SALT_MASTER_CONFIG  master config file when --config is not given
  HALITE_LOG          log filter (default info; e.g. debug, halite=debug)
  HALITE_LOG_FORMAT   text (default) or json

Signals:
  SIGTERM, SIGINT  stop accepting, end /events and /ws streams, let requests
                   in flight finish (graceful_shutdown_timeout, default 30 s;
                   calls still waiting then answer 503 with their jid),
                   exit 0
  SIGHUP           reload TLS certificates and keys, and the master config's
                   per-request keys (external_auth, nodegroups, enabled
                   clients, timeouts); a file that does not load, or a config
                   that moves the master (ports, transport, sockets), keeps the
                   current one and is logged

Exit status: 0 after a clean stop, 1 on a runtime failure (e.g. a port in
use), 2 on a configuration error.";

/// Command line. Flags override the master config.
#[derive(Debug, Parser)]
#[command(
    name = "halite",
    version = VERSION,
    about = "A REST API for Salt masters (a drop-in salt-api replacement)",
    after_help = AFTER_HELP
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

/// The release package's allocator (`--features jemalloc`, which
/// `scripts/package` builds with). glibc's malloc keeps a header beside
/// every chunk, so the untouched pages of the 8 KiB buffers hyper gives each
/// HTTP/1.1 connection count as resident, and what a burst of calls
/// allocated stays resident after it; jemalloc keeps its metadata apart and
/// gives freed pages back to the system (docs/BENCHMARKS.md, "Which
/// allocator"). Development builds and the tests use the system's malloc:
/// jemalloc's C build would take a minute of every CI run.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

//! `proxyd -c FILE` runs the proxy; `proxyd check -c FILE` validates a config; `proxyd status
//! -c FILE` prints the running proxy's workers and backends.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

use proxyd::config::load_file;
use proxyd::server::Server;

/// mimalloc: fewer instructions per allocation than glibc's malloc on the request path (a
/// proxied request allocates a few dozen small blocks), and no arena growth across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "proxyd",
    version,
    about = "Reverse proxy and load balancer that runs its app workers"
)]
struct Cli {
    /// The config file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "proxy.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and exit: 0 when it is good, 1 with the error otherwise.
    Check,
    /// Print the upstreams, backends and workers of the proxyd running this config (from
    /// its admin API's /status).
    Status,
}

fn main() -> ExitCode {
    // First, while proxyd is one thread: it takes NOTIFY_SOCKET out of the environment.
    let notifier = proxyd::notify::Notifier::from_env();
    let cli = Cli::parse();
    let loaded = match load_file(&cli.config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("proxyd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let warnings = proxyd::config::secrets::warnings(&loaded);
    if let Some(Command::Check) = cli.command {
        for w in &warnings {
            eprintln!("proxyd: {w}");
        }
        println!("proxyd: {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Status) = cli.command {
        return status(&loaded.config);
    }
    proxyd::logging::init(&loaded.config.log.level, loaded.config.log.format);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let threads = loaded
        .config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // One thread: a current-thread runtime, with no cross-thread hand-offs per request.
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxyd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(loaded, notifier));
    // The writers flush when idle; the last lines must not be lost at exit.
    proxyd::access_log::shutdown(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("proxyd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `proxyd status`: the running proxyd's status as tables.
fn status(cfg: &proxyd::config::Config) -> ExitCode {
    use proxyd::admin::client;
    let report =
        client::target(cfg).and_then(|(addr, token)| client::fetch(addr, token.as_deref()));
    match report {
        Ok(s) => {
            print!("{}", client::render(&s));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxyd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    loaded: proxyd::config::Loaded,
    notifier: proxyd::notify::Notifier,
) -> anyhow::Result<()> {
    let server = Server::bind(&loaded).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    // The listeners are bound (connections queue from now on) and a SIGTERM from here on
    // drains: tell systemd (Type=notify).
    notifier.ready();
    // SIGUSR1: reopen the access logs after logrotate moved them (nginx's and gunicorn's USR1).
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            tracing::info!("SIGUSR1: reopening the access logs");
            proxyd::access_log::reopen();
        }
    });
    let supervisors = server.supervisors();
    let reloader = server.reloader();
    let on_hup = notifier.clone();
    // SIGHUP: reload the config (certificates included; a bad file keeps the old one serving),
    // then replace every worker, one at a time (gunicorn's HUP).
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config, rolling restart of the workers");
            on_hup.reloading();
            let config = reloader.reload().await;
            let rolled = supervisors.rolling_restart(None).await;
            on_hup.ready_with_status(&match (config, rolled) {
                (Ok(_), Ok(())) => "reloaded; workers replaced".to_string(),
                (Err(e), _) => format!("config not reloaded, the old one keeps serving: {e}"),
                (Ok(_), Err(e)) => format!("reloaded; rolling restart failed: {e}"),
            });
        }
    });
    server
        .run(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
            notifier.stopping();
        })
        .await
}

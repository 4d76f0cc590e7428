//! `proxyd -c FILE` runs the proxy; `proxyd check -c FILE` validates a config (`--print`:
//! and prints it as proxyd reads it); `proxyd status
//! -c FILE` prints the running proxy's workers and backends; `proxyd upgrade -c FILE` makes
//! the running proxy hand its sockets to a new binary; `proxyd reload -c FILE` makes it reload
//! its config. `proxyd run -- COMMAND` and `proxyd proxy --to ADDR` run a config made of
//! their flags (`config::oneliner`).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

use proxyd::app::{App, Start};
use proxyd::config::{load_file_with, Checks, RuntimeShape};
use proxyd::server::Shape;

/// mimalloc: per-thread free lists instead of glibc's bins; see docs/performance.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Check {
        /// Also print the config as proxyd reads it: ${VAR} expanded, every default written
        /// out, admin.token redacted (like nginx -T).
        #[arg(long)]
        print: bool,
        /// Do not require the workers' programs to exist yet: for a check that runs before
        /// the app's dependencies are installed (an Elastic Beanstalk prebuild hook runs
        /// before the platform's `pip install -r requirements.txt`).
        #[arg(long)]
        skip_programs: bool,
    },
    /// Print the upstreams, backends and workers of the proxyd running this config (from
    /// its admin API's /status).
    Status,
    /// Zero-downtime binary upgrade of the proxyd running this config: it starts the new
    /// binary on its listening sockets and drains once that one serves (what SIGUSR2 does).
    /// Asks the admin API (`POST /upgrade`) when the config has one with a fixed port, else
    /// signals the pid in `pid_file`; exits 0 once the new proxyd serves.
    Upgrade,
    /// Make the proxyd running this config reload it (like `nginx -s reload`).
    ///
    /// Exits 0 once it serves the new config, 1 with the reason when the file is bad, the
    /// running proxyd refused it, or could not be reached. Asks the admin API (`POST /reload`)
    /// when the config has one with a fixed port, else sends SIGHUP to the pid in `pid_file`
    /// (which also rolls the workers, and whose outcome is only in that proxyd's log).
    Reload,
    /// Turn the maintenance switch of the proxyd running this config on or off (its admin
    /// API's `POST /maintenance/on|off`): the routes it covers answer 503 with the
    /// maintenance page while it is on.
    Maintenance {
        #[arg(value_enum)]
        switch: OnOff,
    },
    /// Run COMMAND as N workers and balance requests across them (like gunicorn): no config
    /// file needed.
    #[command(arg_required_else_help = true)]
    Run(proxyd::config::oneliner::RunFlags),
    /// Reverse-proxy to one or more servers, balanced (like `caddy reverse-proxy`): no config
    /// file needed.
    #[command(arg_required_else_help = true)]
    Proxy(proxyd::config::oneliner::ProxyFlags),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// A flag-made config with the command line that made it.
fn with_args(mut loaded: proxyd::config::Loaded) -> proxyd::config::Loaded {
    loaded.args = Some(std::env::args_os().skip(1).collect());
    loaded
}

fn main() -> ExitCode {
    // First, while proxyd is one thread: it takes NOTIFY_SOCKET out of the environment.
    let notifier = proxyd::notify::Notifier::from_env();
    // Likewise the sockets an old proxyd handed over (an upgrade), and their variables.
    let inherited = match proxyd::upgrade::Inherited::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("proxyd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let checks = match cli.command {
        Some(Command::Check {
            skip_programs: true,
            ..
        }) => Checks { programs: false },
        _ => Checks::ALL,
    };
    let loaded = match &cli.command {
        // What made it is kept: an upgrade starts the new proxyd with the same arguments.
        Some(Command::Run(flags)) => flags.config().map(with_args),
        Some(Command::Proxy(flags)) => flags.config().map(with_args),
        _ => load_file_with(&cli.config, checks),
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("proxyd: {e}");
            return ExitCode::FAILURE;
        }
    };
    // What the config layer does not check itself: the parts built from it (certificates, CA
    // bundles, the runtime state), built as serving builds them.
    if let Err(e) = proxyd::server::check(&loaded) {
        eprintln!("proxyd: {e}");
        return ExitCode::FAILURE;
    }
    let warnings = proxyd::config::secrets::warnings(&loaded);
    if let Some(Command::Check {
        print,
        skip_programs,
    }) = cli.command
    {
        for w in &warnings {
            eprintln!("proxyd: {w}");
        }
        let unchecked = if skip_programs {
            " (the workers' programs not looked up)"
        } else {
            ""
        };
        if print {
            // The YAML alone on stdout (it can be saved and checked); the verdict on stderr.
            match proxyd::config::print::render(&loaded) {
                Ok(yaml) => print!("{yaml}"),
                Err(e) => {
                    eprintln!("proxyd: {e}");
                    return ExitCode::FAILURE;
                }
            }
            eprintln!("proxyd: {} is valid{unchecked}", cli.config.display());
            return ExitCode::SUCCESS;
        }
        println!("proxyd: {} is valid{unchecked}", cli.config.display());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Status) = cli.command {
        return status(&loaded.config);
    }
    if let Some(Command::Upgrade) = cli.command {
        return report(proxyd::control::upgrade(&loaded));
    }
    if let Some(Command::Reload) = cli.command {
        return report(proxyd::control::reload(&loaded));
    }
    if let Some(Command::Maintenance { switch }) = cli.command {
        return report(proxyd::control::maintenance(&loaded, switch == OnOff::On));
    }
    proxyd::logging::init(&loaded.config.log.level, loaded.config.log.format);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let threads = loaded
        .config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = match Runtime::new(threads, loaded.config.runtime) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxyd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pid_file = loaded
        .config
        .pid_file
        .as_ref()
        .map(|p| loaded.dir.join(&p.value));
    let start = Start {
        inherited,
        notifier,
        shape: runtime.shape(),
    };
    let result = runtime.main.block_on(serve(loaded, start));
    // The accept threads end once the drain is over.
    runtime.stop();
    if let Some(path) = &pid_file {
        // Unless a new proxyd (an upgrade) wrote its own pid there.
        proxyd::upgrade::remove_pid_file(path);
    }
    // The writers flush when idle; the last lines must not be lost at exit.
    proxyd::obs::access_log::shutdown(std::time::Duration::from_secs(2));
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

/// What a command that asked the running proxyd got: its answer on stdout, or why not.
fn report(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxyd: {}", e.trim_end());
            ExitCode::FAILURE
        }
    }
}

/// The runtimes: `main` runs the control plane (and, unless `runtime: per_thread` with
/// `threads` > 1, the connections too); `accept` are the per-thread runtimes' threads.
struct Runtime {
    main: tokio::runtime::Runtime,
    accept: Vec<(tokio::runtime::Handle, std::thread::JoinHandle<()>)>,
    /// Ends the accept threads' runtimes.
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl Runtime {
    /// One thread: a current-thread runtime, with no cross-thread hand-offs per request.
    /// More: tokio's multi-thread runtime, or (`per_thread`) a current-thread runtime on each
    /// of `threads` threads running the accept loops and their connections, beside the main
    /// thread's runtime for the control plane.
    fn new(threads: usize, shape: RuntimeShape) -> std::io::Result<Runtime> {
        let current = || {
            let mut b = tokio::runtime::Builder::new_current_thread();
            b.enable_all();
            b
        };
        if threads <= 1 {
            return Ok(Runtime {
                main: current().build()?,
                accept: Vec::new(),
                stop: None,
            });
        }
        if shape == RuntimeShape::MultiThread {
            let main = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?;
            return Ok(Runtime {
                main,
                accept: Vec::new(),
                stop: None,
            });
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut accept = Vec::with_capacity(threads);
        for i in 0..threads {
            let rt = current().build()?;
            let handle = rt.handle().clone();
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("proxyd-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                })?;
            accept.push((handle, thread));
        }
        Ok(Runtime {
            main: current().build()?,
            accept,
            stop: Some(stop),
        })
    }

    /// Where the accept loops run.
    fn shape(&self) -> Shape {
        if self.accept.is_empty() {
            Shape::Here
        } else {
            Shape::Threads(self.accept.iter().map(|(h, _)| h.clone()).collect())
        }
    }

    /// Ends the accept threads (what is left on them is dropped) and waits for them.
    fn stop(self) {
        if let Some(stop) = &self.stop {
            let _ = stop.send(true);
        }
        for (_, thread) in self.accept {
            let _ = thread.join();
        }
    }
}

async fn serve(loaded: proxyd::config::Loaded, mut start: Start) -> anyhow::Result<()> {
    // Before the first worker starts: what its orphans leave behind is reaped from then on.
    if let Err(e) = proxyd::workers::reaper::start() {
        tracing::warn!("cannot reap orphaned worker processes (they may stay zombies): {e}");
    }
    let app = App::start(&loaded, &mut start)?;
    let Start {
        mut inherited,
        notifier,
        ..
    } = start;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let upgrader = app.upgrader();
    let pid_file = loaded
        .config
        .pid_file
        .as_ref()
        .map(|p| loaded.dir.join(&p.value));
    if inherited.is_upgrade() {
        // Started by an upgrade: the old proxyd serves until this one says it is ready, and
        // this one is ready once its workers are (it accepts nothing before, so if it fails
        // here nobody was served by it).
        app.supervisors()
            .wait_ready()
            .await
            .map_err(anyhow::Error::msg)?;
        // Servers with `health:`: their first checks' verdicts (bounded by health.timeout).
        app.state().load_full().health_settled().await;
        if let Some(path) = &pid_file {
            proxyd::upgrade::write_pid_file(path)
                .map_err(|e| anyhow::anyhow!("cannot write pid_file {}: {e}", path.display()))?;
        }
        // systemd follows this process from now on (the unit needs NotifyAccess=all for
        // systemd to take this from a process that is not the main one yet; the old proxyd
        // sends MAINPID too).
        notifier.notify(&format!(
            "MAINPID={}\nREADY=1\nSTATUS=serving; took over from pid {}",
            std::process::id(),
            inherited.parent()
        ));
        if let Err(e) = inherited.announce_ready() {
            // The old proxyd is gone (it would have killed us otherwise): serve on.
            tracing::warn!("cannot tell the old proxyd this one is ready: {e}");
        }
        tracing::info!(
            old_pid = inherited.parent(),
            "upgrade: ready; the old proxyd stops accepting and drains"
        );
    } else {
        // The listeners are bound (connections queue from now on) and a SIGTERM from here
        // on drains: tell systemd (Type=notify).
        if let Some(path) = &pid_file {
            proxyd::upgrade::write_pid_file(path)
                .map_err(|e| anyhow::anyhow!("cannot write pid_file {}: {e}", path.display()))?;
        }
        notifier.ready();
    }
    // SIGUSR2: start the new binary on these sockets; once it is ready, drain and exit
    // (nginx's USR2). A new binary that fails leaves this one serving.
    tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            tracing::info!("SIGUSR2: upgrading to a new binary");
            let upgrader = upgrader.clone();
            tokio::spawn(async move {
                let _ = upgrader.upgrade().await;
            });
        }
    });
    // SIGUSR1: reopen the access logs after logrotate moved them (nginx's and gunicorn's USR1).
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            tracing::info!("SIGUSR1: reopening the access logs");
            proxyd::obs::access_log::reopen();
        }
    });
    let supervisors = app.supervisors();
    let reloader = app.reloader();
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
    app.run(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        notifier.stopping();
    })
    .await
}

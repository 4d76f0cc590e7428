//! `proxyd run` and `proxyd proxy`: the config their flags stand for. The flags become the
//! document a config file would hold (JSON is YAML's data model), read into the same [`Config`]
//! with the file's defaults and checked by the file's validation; only the errors differ: they
//! name the flag instead of the config key.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::addr::{parse_listen, parse_server_entry};
use super::load::{ConfigError, Loaded};
use super::types::Config;
use super::validate::validate;

/// gunicorn's default bind.
pub const RUN_LISTEN: &str = "127.0.0.1:8000";
/// `proxyd proxy` without `--from`.
pub const PROXY_LISTEN: &str = "127.0.0.1:8080";

/// The upstream `proxyd run` puts its workers in (the name in metrics, logs and /status).
pub const RUN_UPSTREAM: &str = "app";
/// The upstream of `proxyd proxy`'s servers.
pub const PROXY_UPSTREAM: &str = "backend";

/// `proxyd run`: gunicorn's command line.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = RUN_EXAMPLES)]
pub struct RunFlags {
    /// Where clients connect: ip:port, [v6]:port, :port or a port; repeat for several.
    #[arg(
        short = 'b',
        long = "listen",
        visible_alias = "bind",
        value_name = "ADDR",
        default_value = RUN_LISTEN,
        value_parser = listen_addr,
    )]
    pub listen: Vec<String>,

    /// Worker processes to run [default: 2 x cores + 1].
    #[arg(short = 'w', long, value_name = "N")]
    pub workers: Option<usize>,

    /// Requests one worker takes at a time; more wait in proxyd's queue [default: 1].
    // The bounds of workers.concurrency, checked here so the error names the flag.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: Option<u64>,

    /// A request still running after this gets 504 and its worker is killed and replaced:
    /// seconds, or a duration such as 90s or 2m [default: 30s].
    #[arg(short = 't', long, value_name = "SECONDS", value_parser = timeout)]
    pub timeout: Option<Duration>,

    /// Replace a worker after it has served N requests (for apps that leak) [default: never].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub max_requests: Option<u64>,

    #[command(flatten)]
    pub shared: SharedFlags,

    /// The app's command line (after --): each worker runs it with its own port in PORT, and
    /// in place of {port} in the arguments.
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub command: Vec<String>,
}

/// The flags `run` and `proxy` share.
#[derive(Debug, Clone, Args)]
pub struct SharedFlags {
    /// Write an access log (nginx's combined format) to FILE, or to stderr with -.
    #[arg(long, value_name = "FILE")]
    pub access_log: Option<String>,

    /// Serve the admin API (/healthz, /readyz, /metrics, /status) on ADDR.
    #[arg(long, value_name = "ADDR", value_parser = listen_addr)]
    pub admin: Option<String>,

    /// Refuses `-c` (it stands in for the global one, which would be ignored here).
    #[arg(
        id = "config",
        short = 'c',
        long = "config",
        value_name = "FILE",
        hide = true,
        value_parser = no_config_file
    )]
    pub refused_config: Option<PathBuf>,
}

const RUN_EXAMPLES: &str = "\
Examples:
  proxyd run -- python3 app.py                 # PORT=<its port> in each worker's environment
  proxyd run -w 4 -b 0.0.0.0:8000 -- gunicorn -w 1 -b 127.0.0.1:{port} app:app
  proxyd run -w 8 --concurrency 4 -t 120 --access-log - -- node server.js --port {port}

Workers start on loopback ports, get requests once their port accepts, and are restarted when
they crash; a request that finds every worker busy waits in proxyd's queue. `proxyd -c FILE`
with a workers: upstream sets everything else (health checks, scaling, recycling, routes, TLS).";

/// `proxyd proxy`: Caddy's `reverse-proxy` command line.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = PROXY_EXAMPLES)]
pub struct ProxyFlags {
    /// Where clients connect: ip:port, [v6]:port, :port or a port; repeat for several.
    #[arg(
        long = "from",
        value_name = "ADDR",
        default_value = PROXY_LISTEN,
        value_parser = listen_addr,
    )]
    pub from: Vec<String>,

    /// The servers to forward to, balanced by fewest requests in flight: host:port,
    /// [v6]:port, http://host:port, https://host:port or unix:/path.
    #[arg(
        long = "to",
        value_name = "UPSTREAM",
        required = true,
        num_args = 1..,
        value_parser = server,
    )]
    pub to: Vec<String>,

    /// Send the server its own address as Host instead of the client's (for servers that pick
    /// a site by name).
    #[arg(long)]
    pub change_host_header: bool,

    #[command(flatten)]
    pub shared: SharedFlags,
}

const PROXY_EXAMPLES: &str = "\
Examples:
  proxyd proxy --to 127.0.0.1:9000
  proxyd proxy --from :8080 --to 10.0.0.5:8000 --to 10.0.0.6:8000
  proxyd proxy --from 0.0.0.0:80 --to https://example.com:443 --change-host-header

A server that refuses or fails is ejected for a while and idempotent requests are retried on
another; `proxyd -c FILE` sets everything else (routes, TLS, health checks, limits).";

/// Config keys in validation errors, and the flags they come from.
const RUN_KEYS: &[(&str, &str)] = &[
    ("listen: ", "--listen: "),
    ("admin: ", "--admin: "),
    ("upstreams.app.workers.command: ", "COMMAND: "),
    ("upstreams.app.workers.count: ", "--workers: "),
    ("upstreams.app.workers.request_timeout: ", "--timeout: "),
    ("upstreams.app.workers.max_requests: ", "--max-requests: "),
    ("access_log: ", "--access-log: "),
];

const PROXY_KEYS: &[(&str, &str)] = &[
    ("listen: ", "--from: "),
    ("admin: ", "--admin: "),
    ("upstreams.backend.servers: ", "--to: "),
    ("access_log: ", "--access-log: "),
];

impl RunFlags {
    /// The config file these flags stand for.
    pub fn document(&self) -> Value {
        let mut workers = Map::new();
        workers.insert("command".into(), json!(self.command));
        if let Some(n) = self.workers {
            workers.insert("count".into(), json!(n));
        }
        if let Some(n) = self.concurrency {
            workers.insert("concurrency".into(), json!(n));
        }
        if let Some(t) = self.timeout {
            workers.insert("request_timeout".into(), json!(text(t)));
        }
        if let Some(n) = self.max_requests {
            workers.insert("max_requests".into(), json!(n));
        }
        let mut upstreams = Map::new();
        upstreams.insert(RUN_UPSTREAM.into(), json!({ "workers": workers }));
        common(&self.listen, upstreams, &self.shared)
    }

    /// The config to run, checked as a file would be.
    pub fn config(&self) -> Result<Loaded, ConfigError> {
        load("run", self.document(), RUN_KEYS)
    }
}

impl ProxyFlags {
    /// The config file these flags stand for.
    pub fn document(&self) -> Value {
        let mut upstreams = Map::new();
        upstreams.insert(PROXY_UPSTREAM.into(), json!({ "servers": self.to }));
        let mut doc = common(&self.from, upstreams, &self.shared);
        if self.change_host_header {
            doc["headers"] = json!({ "preserve_host": false });
        }
        doc
    }

    /// The config to run, checked as a file would be.
    pub fn config(&self) -> Result<Loaded, ConfigError> {
        load("proxy", self.document(), PROXY_KEYS)
    }
}

/// What both commands set: listeners, the one upstream, admin, access log.
fn common(listen: &[String], upstreams: Map<String, Value>, shared: &SharedFlags) -> Value {
    let listen: Vec<Value> = listen.iter().map(|a| json!({ "addr": a })).collect();
    let mut doc = json!({ "listen": listen, "upstreams": upstreams });
    if let Some(a) = &shared.admin {
        doc["admin"] = json!({ "addr": a });
    }
    if let Some(p) = &shared.access_log {
        doc["access_log"] = json!([{ "format": "combined", "path": p }]);
    }
    doc
}

/// Reads `doc` as the config file's types (so with its defaults) and validates it; `label`
/// stands where a file name would.
fn load(label: &str, doc: Value, keys: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let config =
        Config::deserialize(doc).map_err(|e| ConfigError::new(label, None, e.to_string()))?;
    let loaded = Loaded {
        config,
        file: label.to_string(),
        // Relative paths (the access log, a ./program) are the shell's, as on any command line.
        dir: PathBuf::from("."),
        // The caller, who has the command line, fills it in.
        args: None,
        places: Default::default(),
    };
    validate(&loaded).map_err(|e| ConfigError::new(label, None, flag_names(&e.message, keys)))?;
    Ok(loaded)
}

/// A validation message with the config key it starts with replaced by its flag.
fn flag_names(message: &str, keys: &[(&str, &str)]) -> String {
    keys.iter()
        .find_map(|(key, flag)| {
            message
                .strip_prefix(key)
                .map(|rest| format!("{flag}{rest}"))
        })
        .unwrap_or_else(|| message.to_string())
}

/// `-c` with `run` or `proxy`: the global `-c` would be ignored silently, and it is not.
fn no_config_file(_: &str) -> Result<PathBuf, String> {
    Err("this command takes no config file: its flags are its config (a file runs with proxyd -c FILE)".into())
}

/// A duration as the config file writes one.
fn text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn listen_addr(s: &str) -> Result<String, String> {
    parse_listen(s).map(|_| s.trim().to_string())
}

fn server(s: &str) -> Result<String, String> {
    parse_server_entry(s).map(|_| s.trim().to_string())
}

/// Seconds as gunicorn takes them (`-t 30`), or a duration (`90s`, `2m`, `500ms`).
fn timeout(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{e}; expected seconds (30) or a duration (90s, 500ms)"))?,
    };
    if d.is_zero() {
        // gunicorn's `--timeout 0` turns the time-out off; proxyd always has one.
        return Err(
            "must be longer than 0; for no practical limit give a long one, e.g. 1h".into(),
        );
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, WorkerCount};
    use clap::Parser;

    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        flags: RunFlags,
    }

    #[derive(Parser)]
    struct Proxy {
        #[command(flatten)]
        flags: ProxyFlags,
    }

    fn run(args: &[&str]) -> Result<RunFlags, String> {
        Run::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .map(|r| r.flags)
            .map_err(|e| e.to_string())
    }

    fn proxy(args: &[&str]) -> Result<ProxyFlags, String> {
        Proxy::try_parse_from(std::iter::once("proxy").chain(args.iter().copied()))
            .map(|r| r.flags)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn run_without_flags_has_the_file_defaults() {
        let loaded = run(&["--", "sh", "-c", "exec app --port {port}"])
            .unwrap()
            .config()
            .unwrap();
        let cfg = &loaded.config;
        assert_eq!(cfg.listen.len(), 1);
        assert_eq!(cfg.listen[0].addr.value, RUN_LISTEN);
        assert!(cfg.admin.is_none() && cfg.access_log.is_empty());
        let w = cfg.upstreams[RUN_UPSTREAM].workers.as_ref().unwrap();
        assert_eq!(w.command.value, ["sh", "-c", "exec app --port {port}"]);
        assert!(w.count.is_none(), "proxyd's own default count");
        // The defaults the help text states.
        assert_eq!(w.concurrency, 1);
        assert_eq!(w.request_timeout, Duration::from_secs(30));
        assert_eq!(w.max_requests, 0);
        assert_eq!(
            w.count(),
            2 * std::thread::available_parallelism().unwrap().get() + 1
        );
        // The same as the file with the one required key.
        let file = crate::config::load_str(
            "listen:\n  - addr: \"127.0.0.1:8000\"\nupstreams:\n  app:\n    workers:\n      command: [\"sh\"]\n",
            "f.yaml",
            ".".into(),
        )
        .unwrap();
        let from_file = &file.config.upstreams["app"];
        let from_flags = &cfg.upstreams["app"];
        assert_eq!(
            format!("{:?}", from_file.effective_pool()),
            format!("{:?}", from_flags.effective_pool())
        );
        assert_eq!(
            format!("{:?}", (&from_file.queue.timeout, &from_file.retries)),
            format!("{:?}", (&from_flags.queue.timeout, &from_flags.retries))
        );
        assert_eq!(
            format!("{:?}", (&file.config.limits, &file.config.timeouts)),
            format!("{:?}", (&cfg.limits, &cfg.timeouts))
        );
    }

    #[test]
    fn run_flags_set_their_keys() {
        let flags = run(&[
            "-w",
            "3",
            "--concurrency",
            "2",
            "-t",
            "90",
            "--max-requests",
            "500",
            "--bind",
            "[::1]:0",
            "-b",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--access-log",
            "-",
            "sh",
            "-c",
            "--not-a-flag-of-proxyd",
        ])
        .unwrap();
        // The command starts at its first word, `--` or not; its own flags stay its own.
        assert_eq!(flags.command, ["sh", "-c", "--not-a-flag-of-proxyd"]);
        let cfg = flags.config().unwrap().config;
        let addrs: Vec<&str> = cfg.listen.iter().map(|l| l.addr.value.as_str()).collect();
        assert_eq!(addrs, ["[::1]:0", "127.0.0.1:0"]);
        assert_eq!(cfg.admin.unwrap().addr.value, "127.0.0.1:0");
        assert_eq!(cfg.access_log[0].path.as_ref().unwrap().value, "-");
        let w = cfg.upstreams["app"].workers.clone().unwrap();
        assert_eq!(w.count.unwrap().value, WorkerCount::Fixed(3));
        assert_eq!(w.concurrency, 2);
        assert_eq!(w.request_timeout, Duration::from_secs(90));
        assert_eq!(w.max_requests, 500);
        let t = run(&["-t", "1m 30s", "sh"]).unwrap().config().unwrap();
        assert_eq!(
            t.config.upstreams["app"]
                .workers
                .as_ref()
                .unwrap()
                .request_timeout,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn bad_run_flags_are_named() {
        for (args, want) in [
            (&["sh"][..], ""),
            (&["-w", "0", "sh"], "run: --workers: must be at least 1"),
            (
                &["-w", "5000", "sh"],
                "run: --workers: 5000 workers is more than",
            ),
            (
                &["--", "no-such-program-anywhere", "x"],
                "run: COMMAND: program \"no-such-program-anywhere\" not found",
            ),
            (
                &["-b", "127.0.0.1:7001", "--admin", "127.0.0.1:7001", "sh"],
                "run: --admin: 127.0.0.1:7001 is also a proxy listener",
            ),
            (
                &["-b", "127.0.0.1:7001", "-b", "0.0.0.0:7001", "sh"],
                "run: --listen: 0.0.0.0:7001 is listed twice",
            ),
            (
                &["--access-log", "/etc/hostname/access.log", "sh"],
                "run: --access-log: ",
            ),
        ] {
            let got = run(args).unwrap().config();
            match got {
                Ok(_) => assert!(want.is_empty(), "{args:?} passed"),
                Err(e) => assert!(
                    e.to_string().starts_with(want) && !want.is_empty(),
                    "{args:?}: {e}"
                ),
            }
        }
        // Values of the wrong type are refused while parsing, naming the flag.
        for (args, want) in [
            (&["-w", "many", "sh"][..], "'--workers <N>'"),
            (&["--concurrency", "0", "sh"], "0 is not in 1..=10000"),
            (&["-t", "soon", "sh"], "expected seconds (30) or a duration"),
            (&["-t", "0", "sh"], "must be longer than 0"),
            (&["-b", "example.com:80", "sh"], "is not a listen address"),
            (&["--admin", "127.0.0.1", "sh"], "has no port"),
            (&["-w", "2"], "<COMMAND>"),
            (&["-c", "proxy.yaml", "sh"], "takes no config file"),
            // A mistyped flag before the command is not taken for the command.
            (
                &["--workerz", "4", "--", "sh"],
                "unexpected argument '--workerz'",
            ),
        ] {
            let e = run(args).map(|_| ()).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn proxy_flags() {
        let flags = proxy(&[
            "--to",
            "127.0.0.1:9000",
            "[::1]:9001",
            "--to",
            "unix:/run/a.sock",
        ])
        .unwrap();
        let cfg = flags.config().unwrap().config;
        assert_eq!(cfg.listen[0].addr.value, PROXY_LISTEN);
        let up = &cfg.upstreams[PROXY_UPSTREAM];
        let servers: Vec<&str> = up.servers.iter().map(|s| s.value.as_str()).collect();
        assert_eq!(
            servers,
            ["127.0.0.1:9000", "[::1]:9001", "unix:/run/a.sock"]
        );
        assert_eq!(up.balance, Balance::LeastOutstanding);
        assert!(cfg.headers.preserve_host);
        let cfg = proxy(&[
            "--from",
            ":0",
            "--to",
            "127.0.0.1:1",
            "--change-host-header",
        ])
        .unwrap()
        .config()
        .unwrap()
        .config;
        assert_eq!(cfg.listen[0].addr.value, ":0");
        assert!(!cfg.headers.preserve_host);

        for (args, want) in [
            (&["--from", ":0"][..], "--to <UPSTREAM>"),
            (&["--to", "127.0.0.1"], "has no port"),
            (&["--to", "127.0.0.1:1", "--from", "nowhere"], "has no port"),
        ] {
            let e = proxy(args).map(|_| ()).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let e = proxy(&[
            "--from",
            "127.0.0.1:7002",
            "--admin",
            "127.0.0.1:7002",
            "--to",
            "127.0.0.1:1",
        ])
        .unwrap()
        .config()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "proxy: --admin: 127.0.0.1:7002 is also a proxy listener"
        );
    }
}

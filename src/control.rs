//! Commands that act on the proxyd running a config (`proxyd upgrade`, `proxyd reload`), and
//! how they reach it: its admin API when the config gives the admin a fixed port, else the pid
//! in `pid_file` and a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::admin::client;
use crate::config::Loaded;

/// How to reach the proxyd running a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Running {
    /// Its admin API, and the token its POSTs need.
    Admin(SocketAddr, Option<String>),
    /// The file it wrote its pid to.
    PidFile(PathBuf),
}

/// The admin API when the config has one at a fixed port, else the pid file.
pub fn find(loaded: &Loaded) -> Result<Running, String> {
    let pid_file = loaded
        .config
        .pid_file
        .as_ref()
        .map(|p| loaded.dir.join(&p.value));
    match (client::target(&loaded.config), pid_file) {
        (Ok((addr, token)), _) => Ok(Running::Admin(addr, token)),
        (Err(_), Some(file)) => Ok(Running::PidFile(file)),
        (Err(e), None) => Err(format!(
            "{e}; and the config has no pid_file to find the running proxyd by"
        )),
    }
}

/// `proxyd upgrade`: `POST /upgrade` or SIGUSR2; Ok once the new proxyd serves.
pub fn upgrade(loaded: &Loaded) -> Result<String, String> {
    // The running proxyd may wait up to upgrade.timeout for the new one, then kill it.
    let patience = loaded.config.upgrade.timeout + Duration::from_secs(30);
    match find(loaded)? {
        Running::Admin(addr, token) => client::post(addr, token.as_deref(), "/upgrade", patience),
        Running::PidFile(file) => crate::upgrade::signal_by_pid_file(&file, patience),
    }
}

/// `proxyd reload` (nginx's `-s reload`): `POST /reload`, answered once the new config serves
/// or with why it was refused; else SIGHUP, which also rolls the workers and whose outcome
/// only the running proxyd's log tells.
pub fn reload(loaded: &Loaded) -> Result<String, String> {
    match find(loaded)? {
        Running::Admin(addr, token) => {
            client::post(addr, token.as_deref(), "/reload", reload_patience(loaded))
        }
        Running::PidFile(file) => {
            let pid = crate::upgrade::signal_pid_file(&file, Signal::SIGHUP)?;
            Ok(format!(
                "sent SIGHUP to proxyd pid {pid} (from {}): it reloads its config file and \
                 rolls its workers; its log says how that went (the admin API would answer \
                 once it is done)\n",
                file.display()
            ))
        }
    }
}

/// `proxyd maintenance on|off`: turns the running proxyd's maintenance switch (its admin
/// API's `POST /maintenance/on|off`; there is no signal for it: the `maintenance.file` is
/// the way without an admin API).
pub fn maintenance(loaded: &Loaded, on: bool) -> Result<String, String> {
    let (addr, token) = client::target(&loaded.config)?;
    let path = if on {
        "/maintenance/on"
    } else {
        "/maintenance/off"
    };
    client::post(addr, token.as_deref(), path, Duration::from_secs(5))
}

/// A reload waits for the new workers of each new or changed upstream, one group after the
/// other, up to its start_timeout and a second.
fn reload_patience(loaded: &Loaded) -> Duration {
    let workers: Duration = loaded
        .config
        .upstreams
        .values()
        .filter_map(|u| u.workers.as_ref())
        .map(|w| w.start_timeout + Duration::from_secs(1))
        .sum();
    workers + Duration::from_secs(30)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(extra: &str) -> Loaded {
        let yaml = format!(
            "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:1\"]\n{extra}"
        );
        crate::config::load_str(&yaml, "p.yaml", "/etc/proxyd".into()).unwrap()
    }

    #[test]
    fn the_admin_api_first_then_the_pid_file() {
        let both = loaded("admin: { addr: \"0.0.0.0:9901\", token: t }\npid_file: p.pid\n");
        assert_eq!(
            find(&both).unwrap(),
            Running::Admin("127.0.0.1:9901".parse().unwrap(), Some("t".into()))
        );
        let picked = loaded("admin: { addr: \"127.0.0.1:0\" }\npid_file: run/p.pid\n");
        assert_eq!(
            find(&picked).unwrap(),
            Running::PidFile("/etc/proxyd/run/p.pid".into())
        );
        let neither = find(&loaded("")).unwrap_err();
        assert!(
            neither.contains("no admin") && neither.contains("no pid_file"),
            "{neither}"
        );
    }

    #[test]
    fn a_reload_waits_for_new_workers() {
        let servers = loaded("");
        assert_eq!(reload_patience(&servers), Duration::from_secs(30));
        let yaml = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  a:\n    workers: { command: [sh], start_timeout: 5s }\n  b:\n    workers: { command: [sh] }\nroutes:\n  - { path: /, upstream: a }\n";
        let workers = crate::config::load_str(yaml, "p.yaml", ".".into()).unwrap();
        assert_eq!(reload_patience(&workers), Duration::from_secs(30 + 6 + 31));
    }
}

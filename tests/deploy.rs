//! The deploy/ paths, each run for real where this machine can:
//!
//! - Elastic Beanstalk: deployments of a copy of the sample bundle (with the real binary)
//!   against a temporary root, in EB's order: prebuild hooks, the platform's build step,
//!   predeploy hooks (confighooks for configuration deployments); then `proxyd` started as the
//!   Procfile's `web:` line says, from the installed file, and a 200 from the app's workers,
//!   gunicorn ones included; a broken proxy.yaml fails the first hook that can see it, with
//!   file:line:column, and installs nothing; PORT reaches nginx's upstream; the proxy-none
//!   overlay (port 80 hook, healthd log, the static files option read from a stand-in
//!   get-config into static routes); the nginx tuning under `nginx -t` and in front of
//!   proxyd; scripts/package.sh's zip, its entries and modes, its static musl build, and a
//!   deployment from the zip.
//! - systemd: `systemd-analyze verify` of the unit; sd_notify READY=1 (the listener accepts
//!   then), RELOADING=1 .. READY=1 on SIGHUP, STOPPING=1 on SIGTERM, no NOTIFY_SOCKET in the
//!   workers' environment.
//! - Docker: hadolint, the Dockerfile's shape, the image's config served by the binary and its
//!   HEALTHCHECK command run against it.
//! - Kubernetes: yamllint, kubernetes-validate (custom resources by their expected warning),
//!   the ConfigMaps' proxy.yaml under `proxyd check`, and the probe ports and termination
//!   grace consistent with that config, for both layouts; the edge's (the app behind a headless
//!   Service) served for real: its ConfigMap's config with three demo apps found through a DNS
//!   responder in the test, health_path flipping on SIGTERM; the queue-wait autoscalers
//!   (prometheus-adapter, KEDA) against the HPAs they replace, their PromQL against a real
//!   scrape and under `promtool test rules`.
//! - Compose: the file's shape against its proxy.yaml, `docker compose config` (or
//!   docker-compose's), and that config finding a replica added under Docker's 600 s TTL.
//! - Every script: `sh -n`, shellcheck, `#!` line, execute bit in git, LF endings.
//!
//! A tool that is not installed (shellcheck, yamllint, kubernetes-validate, hadolint,
//! systemd-analyze, nginx, zip, gunicorn, musl-gcc, readelf, promtool, docker-compose) fails
//! its test under CI and is a listed skip locally (tests/common/tools.rs); .ci/run installs
//! them.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::{python, Marker, MARKER_VAR};
use common::{get, proxyd_bin, Got};
use serde_json::Value;

/// How long a step may take before the test gives up (a bound, never a measurement).
const PATIENCE: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn eb_dir() -> PathBuf {
    repo().join("deploy/elasticbeanstalk")
}

/// `uname -m`, named as the bundle names its binaries.
fn arch() -> String {
    let out = Command::new("uname").arg("-m").output().unwrap();
    let m = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match m.as_str() {
        "amd64" => "x86_64".into(),
        "arm64" => "aarch64".into(),
        _ => m,
    }
}

/// The program's path on the PATH, if it is installed.
fn which(tool: &str) -> Option<PathBuf> {
    common::tools::which(tool)
}

/// `what` cannot run without `tool`: a failure under CI, a recorded skip locally.
fn skipped(what: &str, tool: &str) {
    common::tools::require(false, what, tool, "see .ci/run");
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Copies a tree (dot files included; std::fs::copy keeps the permission bits).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// Every file under `dir`, recursively, dot directories included.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A temporary EB instance: `bundle/` (the sample bundle with bin/proxyd-<arch>, the proxy-none
/// overlay applied or not) and `root/`, the fake root the hooks install under.
struct Instance {
    dir: tempfile::TempDir,
    /// PORT for the hooks (EB gives hooks the PORT the web process gets; nothing binds it).
    port: u16,
}

/// Where the Python platform's build step makes the app's virtualenv (on the instance, under
/// the fake root here): `pip install -r requirements.txt` puts gunicorn and the like there.
const VENV_BIN: &str = "var/app/venv/staging-LQM1lest/bin";

/// How a simulated deployment went.
struct Deployment {
    /// The hook that failed (its path in the bundle), as EB stops there.
    failed: Option<String>,
    /// Whether the platform's build step ran.
    built: bool,
    /// What the hooks printed, each under its name.
    log: String,
}

impl Instance {
    fn new(proxy_none: bool) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        copy_tree(&eb_dir(), &bundle);
        std::fs::remove_dir_all(bundle.join("proxy-none")).unwrap();
        if proxy_none {
            copy_tree(&eb_dir().join("proxy-none"), &bundle);
            std::fs::remove_dir_all(bundle.join(".platform/nginx")).unwrap();
        }
        std::fs::create_dir_all(bundle.join("bin")).unwrap();
        // A hard link where the file systems allow (the debug binary is large); the hooks
        // only read it.
        let bin = bundle.join(format!("bin/proxyd-{}", arch()));
        if std::fs::hard_link(proxyd_bin(), &bin).is_err() {
            std::fs::copy(proxyd_bin(), &bin).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        Instance {
            dir,
            port: free_port(),
        }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn installed(&self) -> PathBuf {
        self.root().join("usr/local/bin/proxyd")
    }

    fn venv_bin(&self) -> PathBuf {
        self.root().join(VENV_BIN)
    }

    /// Runs a hook as EB does: the file itself (its `#!` line), from the bundle's root, as
    /// root on the instance would, with PORT and the environment properties.
    fn hook(&self, rel: &str, env: &[(&str, &str)]) -> Output {
        run_hook(&self.bundle(), &self.root(), rel, self.port, env)
    }

    /// Edits the bundle's proxy.yaml: `from` (which must be there) becomes `to`.
    fn edit_config(&self, from: &str, to: &str) -> String {
        let path = self.bundle().join("proxy.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(from),
            "{from:?} is not in proxy.yaml:\n{text}"
        );
        let edited = text.replacen(from, to, 1);
        std::fs::write(&path, &edited).unwrap();
        edited
    }

    /// An application deployment in EB's order (docs: "Instance deployment workflow", and
    /// eb-engine.log's RunAppDeployPreBuildHooks -> InstallDependency -> ... ->
    /// RunAppDeployPreDeployHooks): the prebuild hooks, then the platform's build step
    /// (`build`: the Python platform's `pip install -r requirements.txt` into the app's
    /// virtualenv), then the predeploy hooks; EB stops at the first hook that fails.
    fn deploy(&self, env: &[(&str, &str)], build: impl FnOnce(&Instance)) -> Deployment {
        let mut d = Deployment {
            failed: None,
            built: false,
            log: String::new(),
        };
        if self.stage("hooks/prebuild", env, &mut d) {
            build(self);
            d.built = true;
            self.stage("hooks/predeploy", env, &mut d);
        }
        d
    }

    /// A configuration deployment (an environment property changed): the confighooks, with
    /// no build step.
    fn config_deploy(&self, env: &[(&str, &str)]) -> Deployment {
        let mut d = Deployment {
            failed: None,
            built: false,
            log: String::new(),
        };
        if self.stage("confighooks/prebuild", env, &mut d) {
            self.stage("confighooks/predeploy", env, &mut d);
        }
        d
    }

    fn stage(&self, stage: &str, env: &[(&str, &str)], d: &mut Deployment) -> bool {
        run_stage(&self.bundle(), &self.root(), self.port, stage, env, d)
    }

    /// The Procfile's `web:` command, split into words.
    fn web_command(&self) -> Vec<String> {
        let procfile = std::fs::read_to_string(self.bundle().join("Procfile")).unwrap();
        let line = procfile
            .lines()
            .find_map(|l| l.strip_prefix("web:"))
            .unwrap_or_else(|| panic!("no web: line in the Procfile:\n{procfile}"));
        line.split_whitespace().map(str::to_string).collect()
    }

    /// Starts the Procfile's web process from the bundle's root, with the fake root's
    /// /usr/local/bin first on the PATH (so `proxyd` is the installed file), the app's
    /// virtualenv next (as the Python platform runs Procfile processes) and the real Python
    /// after it (pyenv's `python3` is a wrapper script). PORT is 0 unless `env` says.
    fn start_web(&self, marker: &Marker, env: &[(&str, &str)]) -> Running {
        let argv = self.web_command();
        let python_dir = Path::new(python()).parent().unwrap().to_path_buf();
        let mut dirs = vec![
            self.root().join("usr/local/bin"),
            self.venv_bin(),
            python_dir,
        ];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(self.bundle())
            .env("PATH", std::env::join_paths(dirs).unwrap())
            .env("PORT", "0")
            .env("PROXYD_ADMIN_PORT", "0")
            .env("WEB_CONCURRENCY", "2")
            .env(MARKER_VAR, &marker.0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let running = Running::spawn(cmd);
        // The PATH lookup found the file the hook installed, not some other proxyd.
        let exe = std::fs::read_link(format!("/proc/{}/exe", running.child.id())).unwrap();
        assert_eq!(exe, self.installed().canonicalize().unwrap());
        running
    }
}

/// Runs the files of `bundle`'s `.platform/<stage>` in lexicographic order (as EB does);
/// false, with `d.failed` set, at the first that fails.
fn run_stage(
    bundle: &Path,
    root: &Path,
    port: u16,
    stage: &str,
    env: &[(&str, &str)],
    d: &mut Deployment,
) -> bool {
    let dir = bundle.join(".platform").join(stage);
    let mut hooks: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => return true,
    };
    hooks.sort();
    for name in hooks {
        let rel = format!(".platform/{stage}/{name}");
        let out = run_hook(bundle, root, &rel, port, env);
        d.log += &format!("--- {rel}\n{}", text(&out));
        if !out.status.success() {
            d.failed = Some(rel);
            return false;
        }
    }
    true
}

/// Runs `rel` from `bundle` as EB runs a hook, installing under `root`.
fn run_hook(bundle: &Path, root: &Path, rel: &str, port: u16, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bundle.join(rel));
    cmd.current_dir(bundle)
        .env("PROXYD_PREFIX", root)
        .env("PORT", port.to_string())
        .env("PROXYD_ADMIN_PORT", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A proxyd process with its stderr collected line by line; killed on drop.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: mpsc::Receiver<()>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, new_line) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
                let _ = tx.send(());
            }
        });
        Running {
            child,
            lines,
            new_line,
        }
    }

    /// Waits for a stderr line that `f` maps to Some, and returns that.
    fn wait_for<T>(&self, what: &str, f: impl Fn(&str) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(t) = self.lines.lock().unwrap().iter().find_map(|l| f(l)) {
                return t;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.new_line.recv_timeout(left).is_err() {
                // Timed out, or stderr closed (proxyd exited): one last look.
                if let Some(t) = self.lines.lock().unwrap().iter().find_map(|l| f(l)) {
                    return t;
                }
                panic!(
                    "proxyd never logged {what}: {:?}",
                    self.lines.lock().unwrap()
                );
            }
        }
    }

    /// The proxy listener's address, from its "listening" line (text or JSON logs); an
    /// unspecified address (0.0.0.0) is reached on loopback.
    fn addr(&self) -> SocketAddr {
        let mut addr = self.wait_for("its listener", |l| log_addr(l, "listening"));
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr
    }

    /// The admin listener's address ("admin listening addr=Some(127.0.0.1:9901)").
    fn admin_addr(&self) -> SocketAddr {
        self.wait_for("its admin listener", |l| log_addr(l, "admin listening"))
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the exit (bounded) and returns the exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("proxyd did not exit: {:?}", self.lines.lock().unwrap());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr` of a log line whose message is `message`, in proxyd's text or JSON format
/// (`addr=Some(..)` for the admin's).
fn log_addr(line: &str, message: &str) -> Option<SocketAddr> {
    let addr = if line.starts_with('{') {
        let v: Value = serde_json::from_str(line).ok()?;
        if v["fields"]["message"] != message {
            return None;
        }
        v["fields"]["addr"].as_str()?.to_string()
    } else {
        let (before, after) = line.split_once(" addr=")?;
        if !before.ends_with(&format!(": {message}")) {
            return None;
        }
        after.split_whitespace().next()?.to_string()
    };
    let addr = addr
        .strip_prefix("Some(")
        .map_or(addr.as_str(), |a| a.trim_end_matches(')'));
    addr.parse().ok()
}

/// GET through proxyd, bounded by PATIENCE (the first one may wait in proxyd's queue for a
/// worker to get ready).
async fn get_within(addr: SocketAddr, path: &str) -> Got {
    tokio::time::timeout(PATIENCE, get(addr, path))
        .await
        .unwrap_or_else(|_| panic!("GET {path} via {addr} took over {PATIENCE:?}"))
}

// ---------------------------------------------------------------------------------------------
// Elastic Beanstalk
// ---------------------------------------------------------------------------------------------

const PREBUILD: &str = ".platform/hooks/prebuild/01_proxyd_check.sh";
const PREDEPLOY: &str = ".platform/hooks/predeploy/01_proxyd_install.sh";
const CONFIG_PREBUILD: &str = ".platform/confighooks/prebuild/01_proxyd_check.sh";
const CONFIG_PREDEPLOY: &str = ".platform/confighooks/predeploy/01_proxyd_install.sh";
const HOOK_LIB: &str = ".platform/proxyd/hook-lib.sh";

/// The line in proxy.yaml that names the workers' program.
const SAMPLE_COMMAND: &str = r#"      command: ["python3", "app.py"]"#;

/// The deploy's own build step does nothing for the sample app (standard library only).
fn no_build(_: &Instance) {}

#[tokio::test]
async fn eb_deploy_installs_proxyd_and_the_procfile_web_process_serves() {
    let eb = Instance::new(false);
    let d = eb.deploy(&[], no_build);
    assert_eq!(d.failed, None, "{}", d.log);
    assert!(
        d.log.contains("(the workers' programs not looked up)"),
        "{}",
        d.log
    );
    assert!(d.log.contains("proxy.yaml is valid\n"), "{}", d.log);
    let installed = eb.installed();
    let meta = installed.metadata().unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(meta.len(), std::fs::metadata(proxyd_bin()).unwrap().len());
    // A configuration-only deployment runs the confighooks: the same checks and install.
    let d = eb.config_deploy(&[]);
    assert_eq!(d.failed, None, "{}", d.log);
    assert!(d.log.contains("installed proxyd"), "{}", d.log);
    // Nothing but the binary is left in the install directory (no temp file).
    let left: Vec<_> = std::fs::read_dir(installed.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["proxyd"]);

    assert_eq!(eb.web_command(), ["proxyd", "-c", "proxy.yaml"]);
    let marker = Marker::new("eb-web");
    let mut web = eb.start_web(&marker, &[]);
    let addr = web.addr();
    let got = get_within(addr, "/").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        got.text().starts_with("hello from worker pid "),
        "{}",
        got.text()
    );
    // The app's health path, which proxyd's worker health check uses, answers through it too.
    let got = get_within(addr, "/healthz").await;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "ok\n"));
    // EB stops the web process with SIGTERM: proxyd drains and exits 0, workers with it.
    web.signal("TERM");
    assert_eq!(web.wait_exit(), Some(0));
    marker.wait_none_left().await;
}

/// Whether the Python the tests run has gunicorn (.ci/run pip-installs it).
fn has_gunicorn() -> bool {
    Command::new(python())
        .args(["-c", "import gunicorn"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What `pip install gunicorn` puts in a virtualenv's bin/: the console script of gunicorn's
/// entry point, run by that Python (here the tests' own, where gunicorn is installed).
fn install_gunicorn_script(bin: &Path) {
    std::fs::create_dir_all(bin).unwrap();
    let script = bin.join("gunicorn");
    std::fs::write(
        &script,
        format!(
            "#!{}\nimport sys\nfrom gunicorn.app.wsgiapp import run\nsys.exit(run())\n",
            python()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The PATH without the directories that hold `program` (so a hook cannot find it there).
fn path_without(program: &str) -> String {
    let dirs: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .filter(|d| !d.join(program).exists())
        .collect();
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

#[tokio::test]
async fn eb_fresh_deploy_with_gunicorn_from_requirements_txt_serves() {
    if !has_gunicorn() {
        return skipped("a deploy whose workers are gunicorn", "gunicorn");
    }
    let eb = Instance::new(false);
    // The README's gunicorn worker command, one sync worker per proxyd worker.
    eb.edit_config(
        SAMPLE_COMMAND,
        r#"      command: ["gunicorn", "--workers", "1", "--bind", "127.0.0.1:{port}", "app:application"]"#,
    );
    // A fresh instance: gunicorn is nowhere on the hooks' PATH until the platform's build
    // step installs requirements.txt into the app's virtualenv.
    let path = path_without("gunicorn");
    let env = [("PATH", path.as_str())];
    let venv = eb.venv_bin();
    let d = eb.deploy(&env, |eb| {
        assert!(
            !eb.installed().exists(),
            "installed before the build step ran"
        );
        install_gunicorn_script(&venv);
    });
    assert_eq!(d.failed, None, "{}", d.log);
    assert!(eb.installed().is_file(), "{}", d.log);

    let marker = Marker::new("eb-gunicorn");
    let mut web = eb.start_web(&marker, &[]);
    let addr = web.addr();
    let got = get_within(addr, "/").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        got.text().starts_with("hello from worker pid "),
        "{}",
        got.text()
    );
    // Its workers are the virtualenv's gunicorn (a master and its one sync worker each; the
    // worker keeps the master's command line), found first on the web process's PATH.
    let pid: u32 = got.text()["hello from worker pid ".len()..]
        .trim()
        .parse()
        .unwrap();
    let cmdline =
        String::from_utf8(std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).unwrap();
    let venv_gunicorn = venv.join("gunicorn");
    assert!(
        cmdline.split('\0').any(|a| Path::new(a) == venv_gunicorn),
        "{cmdline:?}"
    );
    web.signal("TERM");
    assert_eq!(web.wait_exit(), Some(0));
    marker.wait_none_left().await;
}

#[test]
fn eb_deploy_fails_on_a_bad_config_and_installs_nothing() {
    // A typo in a key: the prebuild hook stops the deployment before the build step.
    let eb = Instance::new(false);
    let bad = eb.edit_config("      count:", "      cuont:");
    let line = bad.lines().position(|l| l.contains("cuont:")).unwrap() + 1;
    let d = eb.deploy(&[], |_| {
        panic!("the build step ran after a bad prebuild check")
    });
    assert_eq!(d.failed.as_deref(), Some(PREBUILD), "{}", d.log);
    assert!(!d.built);
    assert!(
        d.log
            .contains(&format!("proxy.yaml:{line}:7: unknown field `cuont`")),
        "no file:line:column in: {}",
        d.log
    );
    assert!(d.log.contains("proxy.yaml is invalid"), "{}", d.log);
    assert!(!eb.installed().exists(), "installed despite the bad config");
    // The confighooks fail the same way.
    let d = eb.config_deploy(&[]);
    assert_eq!(d.failed.as_deref(), Some(CONFIG_PREBUILD), "{}", d.log);
    assert!(d.log.contains(&format!("proxy.yaml:{line}:7")), "{}", d.log);

    // A worker program that the build step does not install either: past the prebuild
    // check (programs are not looked up before the build), stopped by the predeploy one.
    let eb = Instance::new(false);
    let bad = eb.edit_config(
        SAMPLE_COMMAND,
        r#"      command: ["gunicron", "app:application"]"#,
    );
    let line = bad.lines().position(|l| l.contains("gunicron")).unwrap() + 1;
    let path = path_without("gunicron");
    let d = eb.deploy(&[("PATH", path.as_str())], |eb| {
        std::fs::create_dir_all(eb.venv_bin()).unwrap();
    });
    assert!(d.built);
    assert_eq!(d.failed.as_deref(), Some(PREDEPLOY), "{}", d.log);
    assert!(
        d.log.contains(&format!(
            "proxy.yaml:{line}:16: upstreams.app.workers.command: program \"gunicron\" not found"
        )),
        "{}",
        d.log
    );
    assert!(!eb.installed().exists(), "installed despite the bad config");

    // A property the config needs but that is malformed (EB passes properties as-is).
    let eb = Instance::new(false);
    let d = eb.config_deploy(&[("PORT", "eighty")]);
    assert_eq!(d.failed.as_deref(), Some(CONFIG_PREBUILD), "{}", d.log);
    assert!(d.log.contains("proxy.yaml:"), "{}", d.log);
    assert!(!eb.installed().exists());
}

#[test]
fn eb_deploy_names_the_missing_binary() {
    let eb = Instance::new(false);
    std::fs::remove_dir_all(eb.bundle().join("bin")).unwrap();
    let d = eb.deploy(&[], no_build);
    assert_eq!(d.failed.as_deref(), Some(PREBUILD), "{}", d.log);
    assert!(
        d.log
            .contains(&format!("bin/proxyd-{} is missing from the bundle", arch())),
        "{}",
        d.log
    );
    assert!(!eb.installed().exists());
}

/// The `server` line of the bundle's nginx upstream.
fn nginx_upstream(bundle: &Path) -> String {
    let conf = std::fs::read_to_string(bundle.join(".platform/nginx/conf.d/proxyd.conf")).unwrap();
    let servers: Vec<&str> = conf
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server "))
        .collect();
    assert_eq!(servers.len(), 1, "{conf}");
    servers[0].to_string()
}

/// proxy.yaml's listener address with `PORT=port` (and the other properties' defaults).
fn eb_listen_addr(bundle: &Path, port: &str) -> String {
    let text = std::fs::read_to_string(bundle.join("proxy.yaml")).unwrap();
    let expanded = proxyd::config::load::expand_env(&text, "proxy.yaml", |name| {
        (name == "PORT").then(|| port.to_string())
    })
    .unwrap();
    let loaded = proxyd::config::load_str_with(
        &expanded,
        "proxy.yaml",
        bundle.to_path_buf(),
        proxyd::config::Checks { programs: false },
    )
    .unwrap();
    loaded.config.listen[0].addr.value.clone()
}

#[test]
fn eb_prebuild_points_nginx_at_the_port_proxyd_listens_on() {
    let eb = Instance::new(false);
    // As shipped: the Python platform's default, 8000, which proxy.yaml also defaults to.
    assert_eq!(nginx_upstream(&eb.bundle()), "server 127.0.0.1:8000;");
    assert_eq!(eb_listen_addr(&eb.bundle(), "8000"), "127.0.0.1:8000");
    for port in ["5000", "8123"] {
        let d = eb.deploy(&[("PORT", port)], no_build);
        assert_eq!(d.failed, None, "{}", d.log);
        let listen = eb_listen_addr(&eb.bundle(), port);
        assert_eq!(listen, format!("127.0.0.1:{port}"));
        assert_eq!(nginx_upstream(&eb.bundle()), format!("server {listen};"));
    }
    // A configuration deployment that changes PORT moves nginx with it.
    let d = eb.config_deploy(&[("PORT", "8200")]);
    assert_eq!(d.failed, None, "{}", d.log);
    assert_eq!(nginx_upstream(&eb.bundle()), "server 127.0.0.1:8200;");
    assert!(
        d.log
            .contains("nginx's upstream is proxyd on 127.0.0.1:8200 (PORT)"),
        "{}",
        d.log
    );
    // A PORT that nginx or proxyd cannot use stops the deployment, named; nginx's file is
    // left as it was. (0, an ephemeral port, suits proxyd alone, never nginx.)
    for (bad, said) in [
        (
            "0",
            "PORT=0 is not a port number from 1 to 65535".to_string(),
        ),
        (
            "70000",
            "port \"70000\" is not a number from 0 to 65535".into(),
        ),
        (
            "123456789012345678901",
            "port \"123456789012345678901\" is not a number".into(),
        ),
    ] {
        let d = eb.deploy(&[("PORT", bad)], no_build);
        assert_eq!(d.failed.as_deref(), Some(PREBUILD), "{bad}: {}", d.log);
        assert!(d.log.contains(&said), "{bad}: {}", d.log);
        assert_eq!(nginx_upstream(&eb.bundle()), "server 127.0.0.1:8200;");
    }
}

/// The proxy-none hooks' environment on this machine: a stand-in `setcap` first on the PATH
/// that records its arguments in `setcap.args` (file capabilities need a file system with
/// extended attributes; what matters here is what the hook asks for), and this user for the
/// web process's.
fn proxy_none_env(eb: &Instance) -> Vec<(&'static str, String)> {
    let fake = eb.dir.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    let record = eb.dir.path().join("setcap.args");
    std::fs::write(
        fake.join("setcap"),
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(fake.join("setcap"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    vec![("PATH", path), ("PROXYD_WEB_USER", me.trim().to_string())]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn eb_proxy_none_overlay_binds_low_ports_and_writes_the_healthd_log() {
    let eb = Instance::new(true);
    let owned = proxy_none_env(&eb);
    let env = env_refs(&owned);
    let record = eb.dir.path().join("setcap.args");

    // Before 01 installed proxyd, 02 says what is missing.
    let out = eb.hook(".platform/hooks/predeploy/02_proxyd_port80.sh", &env);
    assert!(!out.status.success());
    assert!(text(&out).contains("is not installed"), "{}", text(&out));

    // An application deployment, then a configuration one: 02 runs after 01's install each
    // time (the capability goes with the file).
    let d = eb.deploy(&env, no_build);
    assert_eq!(d.failed, None, "{}", d.log);
    let d = eb.config_deploy(&env);
    assert_eq!(d.failed, None, "{}", d.log);
    let calls = std::fs::read_to_string(&record).unwrap();
    let expected = format!("cap_net_bind_service=+ep {}\n", eb.installed().display());
    assert_eq!(calls, expected.repeat(2));
    let logdir = eb.root().join("var/log/nginx/healthd");
    assert!(logdir.is_dir());

    // The overlay's config, served (a loopback port instead of 80; the log in the fake root).
    let base = logdir.join("application.log");
    let marker = Marker::new("eb-proxy-none");
    let mut web = eb.start_web(
        &marker,
        &[
            ("PROXYD_LISTEN", "127.0.0.1:0"),
            ("PROXYD_HEALTHD_LOG", base.to_str().unwrap()),
        ],
    );
    let addr = web.addr();
    let mut h1 = common::H1::connect(addr).await;
    let req = http::Request::get("/")
        .header("host", "env.elasticbeanstalk.com")
        .header("x-forwarded-for", "203.0.113.9")
        .body(common::full(""))
        .unwrap();
    let got = tokio::time::timeout(PATIENCE, h1.send(req)).await.unwrap();
    assert_eq!(got.status, 200);
    // One file per UTC hour: application.log.YYYY-MM-DD-HH; the line is written off the
    // request path, so poll for it.
    let deadline = std::time::Instant::now() + PATIENCE;
    let line = loop {
        let found = std::fs::read_dir(&logdir).unwrap().find_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let hour = name.strip_prefix("application.log.")?;
            assert_eq!(hour.len(), "YYYY-MM-DD-HH".len(), "{name}");
            std::fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .next()
                .map(str::to_string)
        });
        if let Some(l) = found {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no healthd line written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fields: Vec<&str> = line.split('"').collect();
    assert_eq!(fields.len(), 6, "{line}");
    assert_eq!(&fields[1..3], ["/", "200"], "{line}");
    assert_eq!(fields[5], "203.0.113.9", "{line}");
    web.signal("TERM");
    assert_eq!(web.wait_exit(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Elastic Beanstalk: the static files option in the proxy-none bundle
// ---------------------------------------------------------------------------------------------

const STATICFILES: &str = ".platform/hooks/prebuild/00_proxyd_staticfiles.sh";
const CONFIG_STATICFILES: &str = ".platform/confighooks/prebuild/00_proxyd_staticfiles.sh";
const STATICFILES_PY: &str = ".platform/proxyd/staticfiles.py";
const PROXY_NS: &str = "aws:elasticbeanstalk:environment:proxy:staticfiles";
const PYTHON_NS: &str = "aws:elasticbeanstalk:container:python:staticfiles";

impl Instance {
    /// The platform's script tool, `/opt/elasticbeanstalk/bin/get-config` under the fake root,
    /// as a stand-in whose `optionsettings` runs `body` (sh); any other use fails, so the hook
    /// can only rely on the documented form. None: no get-config (not an EB instance).
    fn get_config(&self, body: Option<&str>) {
        let bin = self.root().join("opt/elasticbeanstalk/bin");
        let tool = bin.join("get-config");
        let Some(body) = body else {
            let _ = std::fs::remove_file(&tool);
            return;
        };
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(
            &tool,
            format!(
                "#!/bin/sh\nif [ \"$*\" != optionsettings ]; then\n    echo \"get-config: not what this stand-in knows: $*\" >&2\n    exit 2\nfi\n{body}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// get-config prints `settings` (JSON: namespace -> {option: value}), as EB does.
    fn option_settings(&self, settings: &Value) {
        let file = self.dir.path().join("optionsettings.json");
        std::fs::write(&file, settings.to_string()).unwrap();
        self.get_config(Some(&format!("cat '{}'", file.display())));
    }

    fn config_text(&self) -> String {
        std::fs::read_to_string(self.bundle().join("proxy.yaml")).unwrap()
    }
}

/// The lines between proxy.yaml's staticfiles markers.
fn staticfiles_block(config: &str) -> String {
    let (_, rest) = config
        .split_once("# BEGIN proxyd staticfiles\n")
        .unwrap_or_else(|| panic!("no BEGIN marker:\n{config}"));
    let (block, _) = rest
        .split_once("  # END proxyd staticfiles\n")
        .unwrap_or_else(|| panic!("no END marker:\n{config}"));
    block.to_string()
}

/// Every byte value, then a stretch that is no multiple of any buffer size: a body that
/// text handling or a short read would change.
fn file_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add((i >> 8) as u8))
        .collect()
}

#[tokio::test]
async fn eb_proxy_none_serves_the_static_files_option_and_the_app_the_rest() {
    let eb = Instance::new(true);
    let owned = proxy_none_env(&eb);
    let env = env_refs(&owned);
    let css = file_bytes(300 * 1024 + 7);
    let logo = file_bytes(513);
    std::fs::create_dir_all(eb.bundle().join("static/css")).unwrap();
    std::fs::write(eb.bundle().join("static/css/site.css"), &css).unwrap();
    std::fs::create_dir_all(eb.bundle().join("public/img")).unwrap();
    std::fs::write(eb.bundle().join("public/img/logo.png"), &logo).unwrap();
    // The Python platform's default mapping as EB writes it, a path with a trailing slash and
    // a directory with one in the older namespace, and what else get-config prints.
    eb.option_settings(&serde_json::json!({
        PROXY_NS: { "/static": "static" },
        PYTHON_NS: { "/assets/": "public/img/" },
        "aws:elasticbeanstalk:application:environment": { "PYTHONPATH": "/var/app/venv" },
        "aws:elasticbeanstalk:environment:proxy": { "ProxyServer": "none" },
    }));

    let d = eb.deploy(&env, no_build);
    assert_eq!(d.failed, None, "{}", d.log);
    assert!(
        d.log.contains("/static/ served from static/")
            && d.log.contains("/assets/ served from public/img/"),
        "{}",
        d.log
    );
    let block = staticfiles_block(&eb.config_text());
    assert!(
        block.contains("- path: \"/assets/\"\n    static:\n      root: \"public/img\"\n"),
        "{block}"
    );
    assert!(
        block.contains("- path: \"/static/\"\n    static:\n      root: \"static\"\n"),
        "{block}"
    );

    let logs = tempfile::tempdir().unwrap();
    let base = logs.path().join("application.log");
    let marker = Marker::new("eb-proxy-none-static");
    let mut web = eb.start_web(
        &marker,
        &[
            ("PROXYD_LISTEN", "127.0.0.1:0"),
            ("PROXYD_HEALTHD_LOG", base.to_str().unwrap()),
        ],
    );
    let addr = web.addr();
    // The files, byte for byte, from proxyd.
    let got = get_within(addr, "/static/css/site.css").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(
        got.header("content-type")
            .is_some_and(|t| t.starts_with("text/css")),
        "{:?}",
        got.headers
    );
    assert!(
        got.body == css,
        "/static/css/site.css: not the file's bytes"
    );
    let got = get_within(addr, "/assets/logo.png").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(got.body == logo, "/assets/logo.png: not the file's bytes");
    // A file that is not there is proxyd's 404 (the app would say 200 to any path), as EB's
    // nginx answers in its alias location: no fallback to the app.
    let got = get_within(addr, "/static/css/missing.css").await;
    assert_eq!(got.status, 404, "{}", got.text());
    assert_eq!(got.header("proxyd-error"), Some("not-found"));
    // Everything else is the app's.
    for path in ["/", "/static-not/x", "/app/static/css/site.css"] {
        let got = get_within(addr, path).await;
        assert_eq!(got.status, 200, "{path}");
        assert!(
            got.text().starts_with("hello from worker pid"),
            "{path}: {}",
            got.text()
        );
    }
    web.signal("TERM");
    assert_eq!(web.wait_exit(), Some(0));
}

#[test]
fn eb_proxy_none_without_the_static_files_option_deploys_with_no_static_routes() {
    let shipped = std::fs::read_to_string(eb_dir().join("proxy-none/proxy.yaml")).unwrap();
    // (what get-config does, a warning the hook must print or None)
    let cases: [(Option<&str>, Option<&str>); 6] = [
        // Not an EB instance.
        (None, Some("get-config is not there")),
        // An environment without the option (a platform with no default).
        (
            Some(r#"echo '{"aws:elasticbeanstalk:application:environment":{"A":"b"}}'"#),
            None,
        ),
        (Some(r#"echo '{}'"#), None),
        (Some("echo null"), None),
        (
            Some("echo 'cannot reach the metadata service' >&2; exit 1"),
            Some("optionsettings failed (exit 1: cannot reach the metadata service)"),
        ),
        (Some("echo '<html>'"), Some("printed no JSON")),
    ];
    for (body, warning) in cases {
        let eb = Instance::new(true);
        eb.get_config(body);
        let owned = proxy_none_env(&eb);
        let d = eb.deploy(&env_refs(&owned), no_build);
        assert_eq!(d.failed, None, "{body:?}: {}", d.log);
        assert_eq!(eb.config_text(), shipped, "{body:?}: {}", d.log);
        match warning {
            Some(w) => assert!(
                d.log.contains("proxyd staticfiles hook: warning: ") && d.log.contains(w),
                "{body:?}: {}",
                d.log
            ),
            None => assert!(
                d.log.contains("no static files option: no static routes")
                    && !d.log.contains("warning"),
                "{body:?}: {}",
                d.log
            ),
        }
        assert!(eb.installed().is_file(), "{body:?}");
        assert!(!eb.bundle().join("static").exists(), "{body:?}");
    }

    // A proxy.yaml of the user's own, without the markers: the option is not served, said so,
    // and the deployment goes on.
    let eb = Instance::new(true);
    eb.edit_config(
        "  # BEGIN proxyd staticfiles\n  # END proxyd staticfiles\n",
        "",
    );
    let before = eb.config_text();
    eb.option_settings(&serde_json::json!({ PROXY_NS: { "/static": "static" } }));
    let owned = proxy_none_env(&eb);
    let d = eb.deploy(&env_refs(&owned), no_build);
    assert_eq!(d.failed, None, "{}", d.log);
    assert!(
        d.log.contains("has no '# BEGIN proxyd staticfiles'"),
        "{}",
        d.log
    );
    assert_eq!(eb.config_text(), before);
}

#[test]
fn eb_proxy_none_static_files_option_that_leaves_the_bundle_fails_the_deployment() {
    let cases = [
        (
            PROXY_NS,
            "/static",
            "../static",
            "leaves the application's directory (..)",
        ),
        (
            PROXY_NS,
            "/static",
            "static/../../etc",
            "leaves the application's directory (..)",
        ),
        (PROXY_NS, "/static", "/etc", "'/etc' is an absolute path"),
        (
            PYTHON_NS,
            "/static/",
            "/var/app/current/static",
            "'/var/app/current/static' is an absolute path",
        ),
        (PROXY_NS, "/static", " ", "the value is empty"),
        (
            PROXY_NS,
            "static",
            "static",
            "option name 'static' is not a URL path",
        ),
        (PROXY_NS, "/../static", "static", "has a . or .. segment"),
        (PROXY_NS, "/", "build", "would serve the whole site"),
        (
            PROXY_NS,
            "/app.py",
            "app.py",
            "app.py is in the bundle but is not a directory",
        ),
    ];
    let shipped = std::fs::read_to_string(eb_dir().join("proxy-none/proxy.yaml")).unwrap();
    for (ns, name, value, message) in cases {
        let eb = Instance::new(true);
        eb.option_settings(&serde_json::json!({ ns: { name: value } }));
        let owned = proxy_none_env(&eb);
        let d = eb.deploy(&env_refs(&owned), no_build);
        let case = format!("{ns}: {name}: {value:?}");
        assert_eq!(d.failed.as_deref(), Some(STATICFILES), "{case}: {}", d.log);
        assert!(!d.built, "{case}");
        assert!(
            d.log
                .contains(&format!("proxyd staticfiles hook: {ns}: {name}"))
                && d.log.contains(message)
                && d.log.contains("stopping the deployment before the build"),
            "{case}: {}",
            d.log
        );
        assert_eq!(eb.config_text(), shipped, "{case}");
        assert!(!eb.installed().exists(), "{case}");
    }
}

#[test]
fn eb_proxy_none_static_files_hook_replaces_its_block_and_is_idempotent() {
    let eb = Instance::new(true);
    let shipped = eb.config_text();
    std::fs::create_dir_all(eb.bundle().join("static")).unwrap();
    eb.option_settings(
        &serde_json::json!({ PROXY_NS: { "/static/": "static/", "/media": "uploads" } }),
    );
    let out = eb.hook(STATICFILES, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let once = eb.config_text();
    // A directory the bundle lacks is made, empty: 404s under it, as nginx's.
    assert!(eb.bundle().join("uploads").is_dir());
    let out = eb.hook(STATICFILES, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(eb.config_text(), once, "a second run changed proxy.yaml");
    assert_eq!(once.matches("- path: \"/static/\"").count(), 1, "{once}");
    assert_eq!(once.matches("- path: \"/media/\"").count(), 1, "{once}");
    // Outside the block nothing changed.
    let without = |t: &str| t.replace(&staticfiles_block(t), "");
    assert_eq!(without(&once), shipped);

    // The option changed (a configuration deployment runs the confighook, then the check):
    // the block is the new option's alone.
    eb.option_settings(&serde_json::json!({ PYTHON_NS: { "/assets": "static" } }));
    let owned = proxy_none_env(&eb);
    let d = eb.config_deploy(&env_refs(&owned));
    assert_eq!(d.failed, None, "{}", d.log);
    let block = staticfiles_block(&eb.config_text());
    assert!(block.contains("- path: \"/assets/\""), "{block}");
    assert!(
        !block.contains("/static/") && !block.contains("/media/"),
        "{block}"
    );
    let out = Command::new(proxyd_bin())
        .args(["check", "--skip-programs", "-c"])
        .arg(eb.bundle().join("proxy.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // The option removed: the block is empty, the file as shipped.
    eb.option_settings(&serde_json::json!({}));
    let out = eb.hook(CONFIG_STATICFILES, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(eb.config_text(), shipped);
}

/// An nginx.conf shaped like the EB platform's: http { include conf.d/*.conf; server {
/// listen; include conf.d/elasticbeanstalk/*.conf; } }, with `bundle`'s .platform/nginx
/// files as the deployment left them (EB copies them into place after the prebuild hooks).
fn eb_nginx_prefix(dir: &Path, bundle: &Path, listen: u16) -> PathBuf {
    let prefix = dir.join("nginx");
    copy_tree(
        &bundle.join(".platform/nginx/conf.d"),
        &prefix.join("conf.d"),
    );
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    // Worker processes (user nobody when started as root) must reach the temp directories.
    for d in [dir, prefix.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let p = prefix.display();
    std::fs::write(
        prefix.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {p}/nginx.pid;\n\
             error_log {p}/logs/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  include conf.d/*.conf;\n\
             \x20 server {{\n    listen 127.0.0.1:{listen};\n\
             \x20   include conf.d/elasticbeanstalk/*.conf;\n  }}\n}}\n"
        ),
    )
    .unwrap();
    prefix
}

#[tokio::test]
async fn eb_nginx_tuning_passes_nginx_t_and_proxies_to_proxyd() {
    let Some(nginx) = which("nginx").or_else(|| {
        Path::new("/usr/sbin/nginx")
            .exists()
            .then(|| PathBuf::from("/usr/sbin/nginx"))
    }) else {
        return skipped("nginx in front of proxyd", "nginx");
    };
    // The deployment's PORT is where proxyd listens and, through the prebuild hook, where
    // nginx's upstream points: nothing in the test rewrites nginx's files.
    let eb = Instance::new(false);
    let d = eb.deploy(&[], no_build);
    assert_eq!(d.failed, None, "{}", d.log);
    let marker = Marker::new("eb-nginx");
    let port = eb.port.to_string();
    let web = eb.start_web(&marker, &[("PORT", port.as_str())]);
    let upstream = web.addr();
    assert_eq!(nginx_upstream(&eb.bundle()), format!("server {upstream};"));

    // nginx cannot listen on port 0: take a free port, and try again if another process
    // takes it in between.
    let mut tries = 0;
    let (nginx_proc, front) = loop {
        tries += 1;
        let port = free_port();
        let prefix = eb_nginx_prefix(&eb.dir.path().join(format!("n{tries}")), &eb.bundle(), port);
        let conf = prefix.join("nginx.conf");
        let t = Command::new(&nginx)
            .arg("-t")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(t.status.success(), "nginx -t: {}", text(&t));
        let mut child = Command::new(&nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        let up = loop {
            if std::net::TcpStream::connect(front).is_ok() {
                break true;
            }
            if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if up {
            break (StopOnDrop(child), front);
        }
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
        assert!(tries < 3, "nginx did not start: {log}");
    };
    // Three requests, each on a new client connection to nginx: nginx's upstream keepalive
    // carries them all on the one connection it opened to proxyd.
    for _ in 0..3 {
        let got = tokio::time::timeout(PATIENCE, get(front, "/"))
            .await
            .unwrap();
        assert_eq!(got.status, 200, "{got:?}");
        assert!(
            got.text().starts_with("hello from worker pid "),
            "{}",
            got.text()
        );
    }
    let metrics = get_within(web.admin_addr(), "/metrics").await.text();
    let accepted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("proxyd_client_connections_total "))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(
        accepted, "1",
        "nginx did not reuse its connection to proxyd"
    );
    drop(nginx_proc);
}

/// nginx's master, stopped with SIGTERM on drop (it stops its workers; SIGKILL would leave
/// them running).
struct StopOnDrop(Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let _ = kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// The entries of a zip with their unix modes (Python's zipfile; the suite needs Python).
fn zip_entries(zip: &Path) -> BTreeMap<String, u32> {
    let out = Command::new(python())
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             for i in zipfile.ZipFile(sys.argv[1]).infolist():\n\
             \x20   print('%o %s' % ((i.external_attr >> 16) & 0o777, i.filename))",
        )
        .arg(zip)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| {
            let (mode, name) = l.split_once(' ').unwrap();
            (name.to_string(), u32::from_str_radix(mode, 8).unwrap())
        })
        .collect()
}

fn package(out: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(repo().join("scripts/package.sh"));
    cmd.env("PROXYD_BIN", proxyd_bin())
        .env_remove("PROXYD_ARCHS")
        .env("PROXYD_BUNDLE_OUT", out)
        .current_dir(repo());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn package_sh_zips_the_bundle_with_its_execute_bits() {
    let dir = tempfile::tempdir().unwrap();
    let bin = format!("bin/proxyd-{}", arch());
    for zipper in ["zip", "python3"] {
        if zipper == "zip" && which("zip").is_none() {
            skipped("package.sh with zip", "zip");
            continue;
        }
        let zip = dir.path().join(format!("bundle-{zipper}.zip"));
        let out = package(&zip, &[("PROXYD_ZIP", zipper)]);
        assert!(out.status.success(), "{}", text(&out));
        // The test binary is glibc's, linked dynamically: shipped, with a warning.
        if which("readelf").is_some() {
            assert!(
                text(&out).contains("is dynamically linked: the instance needs a glibc"),
                "{}",
                text(&out)
            );
        }
        let entries = zip_entries(&zip);
        let expected: BTreeMap<String, u32> = [
            ("Procfile", 0o644),
            ("proxy.yaml", 0o644),
            ("app.py", 0o644),
            (PREBUILD, 0o755),
            (PREDEPLOY, 0o755),
            (CONFIG_PREBUILD, 0o755),
            (CONFIG_PREDEPLOY, 0o755),
            (HOOK_LIB, 0o644),
            (".platform/nginx/conf.d/proxyd.conf", 0o644),
            (
                ".platform/nginx/conf.d/elasticbeanstalk/00_application.conf",
                0o644,
            ),
            (bin.as_str(), 0o755),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // Modes as git checks files out (umask 022); the hooks and binary must be 0755.
        let got: BTreeMap<String, u32> = entries
            .iter()
            .map(|(k, v)| (k.clone(), v & 0o755))
            .collect();
        assert_eq!(got, expected, "{zipper}");
    }

    // The proxy-none variant: the overlay replaces proxy.yaml and adds its hooks and option
    // settings; no nginx tuning.
    let zip = dir.path().join("none.zip");
    let out = package(&zip, &[("PROXYD_EB_PROXY", "none")]);
    assert!(out.status.success(), "{}", text(&out));
    let entries = zip_entries(&zip);
    for (name, mode) in [
        (".ebextensions/proxyd-proxy-none.config", 0o644),
        (".platform/hooks/predeploy/02_proxyd_port80.sh", 0o755),
        (".platform/confighooks/predeploy/02_proxyd_port80.sh", 0o755),
        (STATICFILES, 0o755),
        (CONFIG_STATICFILES, 0o755),
        (STATICFILES_PY, 0o644),
        (PREBUILD, 0o755),
        (PREDEPLOY, 0o755),
        (HOOK_LIB, 0o644),
    ] {
        assert_eq!(
            entries.get(name).map(|m| m & 0o755),
            Some(mode),
            "{name}: {entries:?}"
        );
    }
    assert!(!entries.keys().any(|k| k.contains("nginx")), "{entries:?}");

    // What EB does with the zip: extract (modes kept, as unzip does) and run the hooks.
    let root = dir.path().join("instance");
    let staging = dir.path().join("staging");
    unzip(&dir.path().join("bundle-python3.zip"), &staging);
    let mut d = Deployment {
        failed: None,
        built: false,
        log: String::new(),
    };
    for stage in ["hooks/prebuild", "hooks/predeploy"] {
        assert!(
            run_stage(&staging, &root, free_port(), stage, &[], &mut d),
            "{}",
            d.log
        );
    }
    assert!(root.join("usr/local/bin/proxyd").is_file(), "{}", d.log);
}

/// Extracts `zip` into `dir` as EB does (unzip keeps the modes).
fn unzip(zip: &Path, dir: &Path) {
    let out = Command::new(python())
        .arg("-c")
        .arg(
            "import os, sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             for i in z.infolist():\n\
             \x20   p = z.extract(i, sys.argv[2])\n\
             \x20   os.chmod(p, (i.external_attr >> 16) & 0o777 or 0o644)",
        )
        .arg(zip)
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// What `readelf` says of a binary's program headers and dynamic section.
fn elf_facts(bin: &Path, readelf: &Path) -> String {
    let out = Command::new(readelf)
        .args(["-lWd"])
        .arg(bin)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(out.status.success(), "readelf: {}", text(&out));
    text(&out)
}

/// package.sh without PROXYD_BIN: it builds proxyd for the musl target, static, so the
/// bundle's binary runs on any Linux instance whatever glibc the build machine has. The test
/// builds the dev profile (about two minutes from scratch on two cores, in its own target
/// directory): the same target, C toolchain (musl-gcc for ring) and static link as the
/// release build, without the release profile's fat LTO, which takes several times longer
/// and is the only difference.
#[test]
fn package_sh_builds_a_static_musl_binary() {
    let host = arch();
    let triple = format!("{host}-unknown-linux-musl");
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let sysroot = String::from_utf8(sysroot.stdout).unwrap();
    let has_target = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(&triple)
        .join("lib")
        .is_dir();
    if !has_target {
        return skipped(
            "package.sh's musl build",
            &format!("the Rust target {triple} (rustup target add {triple})"),
        );
    }
    if which("musl-gcc").is_none() {
        return skipped("package.sh's musl build", "musl-gcc (musl-tools)");
    }
    let Some(readelf) = which("readelf") else {
        return skipped("package.sh's musl build", "readelf (binutils)");
    };
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("bundle.zip");
    let target_dir = repo().join("target/package-test");
    let out = Command::new(repo().join("scripts/package.sh"))
        .env_remove("PROXYD_BIN")
        .env("PROXYD_ARCHS", &host)
        .env("PROXYD_PROFILE", "dev")
        .env("PROXYD_BUNDLE_OUT", &zip)
        .env("CARGO_TARGET_DIR", &target_dir)
        // No debug info: less to build and link; nothing here reads it.
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "package.sh: {}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "building proxyd for {triple} (dev profile, native)"
        )),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("dynamically linked"), "{}", text(&out));
    let entries = zip_entries(&zip);
    let name = format!("bin/proxyd-{host}");
    assert_eq!(
        entries.get(&name).map(|m| m & 0o755),
        Some(0o755),
        "{entries:?}"
    );

    let staging = dir.path().join("staging");
    unzip(&zip, &staging);
    let bin = staging.join(&name);
    // Static: no program interpreter (ld.so) to find, no shared library to load.
    let facts = elf_facts(&bin, &readelf);
    assert!(!facts.contains("program interpreter"), "{facts}");
    assert!(!facts.contains("(NEEDED)"), "{facts}");
    // It runs, with nothing from this machine's environment.
    let out = Command::new(&bin)
        .arg("--version")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("proxyd {}", env!("CARGO_PKG_VERSION"))
    );
    // And deploys: the hooks run it, check the bundle's config and install it.
    let root = dir.path().join("instance");
    let mut d = Deployment {
        failed: None,
        built: false,
        log: String::new(),
    };
    for stage in ["hooks/prebuild", "hooks/predeploy"] {
        assert!(
            run_stage(&staging, &root, free_port(), stage, &[], &mut d),
            "{}",
            d.log
        );
    }
    let installed = root.join("usr/local/bin/proxyd");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&bin).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Scripts: syntax, shellcheck, #! lines, execute bits in git, LF endings
// ---------------------------------------------------------------------------------------------

/// Every shell script under deploy/ and scripts/.
fn shell_scripts() -> Vec<PathBuf> {
    let mut all = files_under(&repo().join("deploy"));
    all.extend(files_under(&repo().join("scripts")));
    all.retain(|p| p.extension().is_some_and(|e| e == "sh"));
    assert!(all.len() >= 5, "{all:?}");
    all
}

#[test]
fn scripts_parse_and_pass_shellcheck() {
    for script in shell_scripts() {
        let body = std::fs::read_to_string(&script).unwrap();
        assert!(
            body.starts_with("#!/bin/sh\n"),
            "{}: not a POSIX sh script",
            script.display()
        );
        for shell in ["sh", "dash", "bash"] {
            if which(shell).is_none() {
                continue;
            }
            let out = Command::new(shell).arg("-n").arg(&script).output().unwrap();
            assert!(
                out.status.success(),
                "{shell} -n {}: {}",
                script.display(),
                text(&out)
            );
        }
    }
    let Some(shellcheck) = which("shellcheck") else {
        return skipped("shellcheck of deploy/ and scripts/", "shellcheck");
    };
    let out = Command::new(shellcheck)
        .args(["--shell=sh", "--severity=style", "--external-sources"])
        .args(shell_scripts())
        .output()
        .unwrap();
    assert!(out.status.success(), "shellcheck:\n{}", text(&out));
}

#[test]
fn hooks_are_executable_in_git_with_lf_endings() {
    let must_run: Vec<PathBuf> = files_under(&eb_dir())
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.contains("/.platform/hooks/") || s.contains("/.platform/confighooks/")
        })
        .chain([repo().join("scripts/package.sh")])
        .collect();
    assert!(must_run.len() >= 5, "{must_run:?}");
    for path in &must_run {
        let mode = path.metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{} is not executable", path.display());
        let body = std::fs::read(path).unwrap();
        assert!(body.starts_with(b"#!"), "{}: no #! line", path.display());
        assert!(!body.contains(&b'\r'), "{}: CR in the file", path.display());
    }
    // The mode that a clone gets is git's, not this working tree's.
    let out = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(["ls-files", "--stage", "--", "deploy", "scripts"])
        .output();
    let listed = match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap(),
        _ => return skipped("execute bits in git (not a git checkout)", "git"),
    };
    let modes: BTreeMap<PathBuf, &str> = listed
        .lines()
        .filter_map(|l| {
            let (meta, path) = l.split_once('\t')?;
            Some((repo().join(path), meta.split(' ').next()?))
        })
        .collect();
    for path in &must_run {
        match modes.get(path) {
            Some(mode) => assert_eq!(*mode, "100755", "{} in git", path.display()),
            None => println!("NOTE: {} is not committed yet", path.display()),
        }
    }
    // Every file in the EB bundle: LF endings (nginx and YAML files too).
    for path in files_under(&eb_dir()) {
        let body = std::fs::read(&path).unwrap();
        assert!(!body.contains(&b'\r'), "{}: CR in the file", path.display());
    }
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

/// `key=value` lines of a unit file (repeated keys keep every value, in order).
fn unit_settings(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    out
}

/// Seconds in a systemd time span or a proxyd duration ("75s", "1min", "500ms").
fn secs(span: &str) -> f64 {
    humantime::parse_duration(span)
        .unwrap_or_else(|e| panic!("{span:?}: {e}"))
        .as_secs_f64()
}

#[test]
fn systemd_unit_is_notify_with_a_stop_timeout_past_the_drain() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/proxyd.service")).unwrap();
    let s = unit_settings(&unit);
    let one = |k: &str| -> &str {
        match s.get(k).map(Vec::as_slice) {
            Some([v]) => v,
            other => panic!("{k}: {other:?}"),
        }
    };
    assert_eq!(one("Type"), "notify");
    // A binary upgrade's new process notifies before it is the main one.
    assert_eq!(one("NotifyAccess"), "all");
    assert_eq!(one("KillMode"), "mixed");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(
        s["ExecReload"],
        [
            "/usr/local/bin/proxyd check -c /etc/proxyd/proxy.yaml",
            "/bin/kill -HUP $MAINPID"
        ]
    );
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
    ] {
        assert_eq!(one(k), v, "{k}");
    }
    // The longest clean stop with proxyd's defaults: the clients' drain, then the workers'.
    let yaml = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    workers:\n      command: [\"sh\"]\n";
    let cfg = proxyd::config::load_str(yaml, "defaults.yaml", repo())
        .unwrap()
        .config;
    let w = cfg.upstreams["app"].workers.as_ref().unwrap();
    let drain = (cfg.timeouts.shutdown_grace + w.graceful_timeout + w.kill_timeout).as_secs_f64();
    let stop = secs(one("TimeoutStopSec"));
    assert!(
        stop > drain,
        "TimeoutStopSec {stop}s must exceed proxyd's drain, {drain}s"
    );

    let Some(analyze) = which("systemd-analyze") else {
        return skipped("systemd-analyze verify", "systemd-analyze");
    };
    // verify insists that ExecStart's program exists; point a copy at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("proxyd.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/proxyd", proxyd_bin())).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    assert_eq!(text(&out).trim(), "", "systemd-analyze verify complained");
    // The unit as shipped: its only complaint may be the binary not installed here.
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(repo().join("deploy/systemd/proxyd.service"))
        .output()
        .unwrap();
    for line in text(&out).lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains("Command /usr/local/bin/proxyd is not executable"),
            "systemd-analyze verify: {line}"
        );
    }
}

/// A port free right now (for a listener whose address the test must know before proxyd
/// says it is ready).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The next notification proxyd sends.
async fn recv(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, sock.recv(&mut buf))
        .await
        .expect("no notification from proxyd")
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[tokio::test]
async fn sd_notify_ready_reloading_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let marker = Marker::new("sd-notify");
    let port = free_port();
    let app = repo().join("examples/app.py");
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listen:\n  - addr: \"127.0.0.1:{port}\"\nupstreams:\n  app:\n    workers:\n      \
             command: [{:?}, {:?}]\n      count: 1\n      env: {{{MARKER_VAR}: \"{}\"}}\n      \
             health: {{path: /healthz}}\n      kill_timeout: 2s\n",
            python(),
            app.display(),
            marker.0
        ),
    )
    .unwrap();
    let mut cmd = Command::new(proxyd_bin());
    cmd.arg("-c").arg(&config).env("NOTIFY_SOCKET", &sock_path);
    let mut proxyd = Running::spawn(cmd);

    assert_eq!(recv(&sock).await, "READY=1");
    // Ready means the listener takes connections: this one is accepted, and its request
    // answered once the worker is up.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let got = get_within(addr, "/pid").await;
    assert_eq!(got.status, 200, "{got:?}");
    let worker: u32 = got.text().trim().parse().unwrap();
    // proxyd took NOTIFY_SOCKET out of its environment before starting the worker.
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    assert!(environ
        .split(|b| *b == 0)
        .any(|v| v.starts_with(MARKER_VAR.as_bytes())));
    assert!(
        !environ
            .split(|b| *b == 0)
            .any(|v| v.starts_with(b"NOTIFY_SOCKET=")),
        "the worker inherited NOTIFY_SOCKET"
    );

    // SIGHUP: RELOADING=1 with the monotonic clock, then READY=1 when the reload and the
    // rolling restart are over.
    proxyd.signal("HUP");
    let reloading = recv(&sock).await;
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("{reloading}"))
        .parse()
        .unwrap();
    assert!(usec <= proxyd::notify::monotonic_usec().unwrap());
    assert_eq!(
        recv(&sock).await,
        "READY=1\nSTATUS=reloaded; workers replaced"
    );
    let got = get_within(addr, "/pid").await;
    assert_ne!(
        got.text().trim().parse::<u32>().unwrap(),
        worker,
        "not replaced"
    );

    proxyd.signal("TERM");
    assert_eq!(recv(&sock).await, "STOPPING=1");
    assert_eq!(proxyd.wait_exit(), Some(0));
    marker.wait_none_left().await;
}

// ---------------------------------------------------------------------------------------------
// Docker
// ---------------------------------------------------------------------------------------------

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (op, args) = current.split_once(' ').unwrap_or((current.as_str(), ""));
        out.push((op.to_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

#[tokio::test]
async fn docker_image_config_serves_and_its_healthcheck_passes() {
    let steps = dockerfile();
    let all = |op: &str| -> Vec<String> {
        steps
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .collect()
    };
    let from = all("FROM");
    assert_eq!(from.len(), 2, "multi-stage: {from:?}");
    assert!(
        from[0].starts_with("rust:") && from[0].ends_with(" AS build"),
        "{from:?}"
    );
    assert_eq!(all("STOPSIGNAL"), ["SIGTERM"]);
    let user = all("USER");
    assert_eq!(user.len(), 1);
    assert!(
        !user[0].starts_with("root") && !user[0].starts_with("0"),
        "{user:?}"
    );
    assert_eq!(all("EXPOSE"), ["8080 9901"]);
    assert_eq!(all("ENTRYPOINT"), [r#"["proxyd"]"#]);
    // Whatever the build copies from the repository exists and passes the .dockerignore.
    let ignore =
        std::fs::read_to_string(repo().join("deploy/docker/Dockerfile.dockerignore")).unwrap();
    for copy in all("COPY").iter().filter(|c| !c.starts_with("--from")) {
        let words: Vec<&str> = copy.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            assert!(repo().join(src).exists(), "COPY {src}: missing");
            let kept = format!("!{}", src.trim_end_matches('/'));
            assert!(
                ignore.lines().any(|l| l.trim_end_matches('/') == kept),
                "COPY {src} is not let through {ignore}"
            );
        }
    }
    let healthcheck = all("HEALTHCHECK");
    assert_eq!(healthcheck.len(), 1);
    let cmd_json = healthcheck[0].split_once("CMD ").unwrap().1;
    let probe: Vec<String> = serde_json::from_str(cmd_json).unwrap();
    assert_eq!(probe[0], "python3", "the image has python3: {probe:?}");

    if let Some(hadolint) = which("hadolint") {
        let out = Command::new(hadolint)
            .arg(repo().join("deploy/docker/Dockerfile"))
            .output()
            .unwrap();
        assert!(out.status.success(), "hadolint:\n{}", text(&out));
    } else {
        skipped("hadolint of deploy/docker/Dockerfile", "hadolint");
    }

    // The image's proxy.yaml with the image's app, as the entrypoint runs it (the app
    // directory and ports moved for this machine).
    let app_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("examples/app.py"),
        app_dir.path().join("app.py"),
    )
    .unwrap();
    let python_dir = Path::new(python()).parent().unwrap().to_path_buf();
    let mut dirs = vec![python_dir];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(dirs).unwrap();
    let marker = Marker::new("docker");
    let mut cmd = Command::new(proxyd_bin());
    cmd.arg("-c")
        .arg(repo().join("deploy/docker/proxy.yaml"))
        .env("PATH", &path)
        .env("APP_DIR", app_dir.path())
        .env("PORT", "0")
        .env("PROXYD_ADMIN_PORT", "0")
        .env("WEB_CONCURRENCY", "2")
        .env(MARKER_VAR, &marker.0);
    let mut proxyd = Running::spawn(cmd);
    let addr = proxyd.addr();
    let admin = proxyd.admin_addr();
    let got = get_within(addr, "/").await;
    assert_eq!(got.status, 200, "{got:?}");
    // The HEALTHCHECK command, as Docker would run it in the container.
    let healthcheck = || {
        Command::new(python())
            .args(&probe[1..])
            .env("PROXYD_ADMIN_PORT", admin.port().to_string())
            .output()
            .unwrap()
    };
    let out = healthcheck();
    assert!(out.status.success(), "HEALTHCHECK failed: {}", text(&out));
    proxyd.signal("TERM");
    assert_eq!(proxyd.wait_exit(), Some(0));
    let out = healthcheck();
    assert!(
        !out.status.success(),
        "HEALTHCHECK passed with proxyd stopped"
    );
    marker.wait_none_left().await;
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn manifest(name: &str) -> Value {
    let text = std::fs::read_to_string(k8s_dir().join(name)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The API group of a manifest's `apiVersion` ("" for the core group's `v1`).
fn api_group(doc: &Value) -> &str {
    let version = doc["apiVersion"].as_str().unwrap_or("");
    version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// Custom resources: the Prometheus Operator's ServiceMonitor and KEDA's ScaledObjects.
/// kubernetes-validate has the API's own schemas only.
const CRD_GROUPS: [&str; 2] = ["monitoring.coreos.com", "keda.sh"];

#[test]
fn kubernetes_manifests_pass_yamllint_and_kubernetes_validate() {
    let mut yamls: Vec<PathBuf> = files_under(&k8s_dir())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    yamls.retain(|p| !p.ends_with(".yamllint.yaml"));
    // The sidecar-less layout, edge/ and queue-wait/.
    assert!(yamls.len() >= 20, "{yamls:?}");
    if let Some(yamllint) = which("yamllint") {
        let out = Command::new(yamllint)
            .arg("--strict")
            .arg("-c")
            .arg(k8s_dir().join(".yamllint.yaml"))
            .args(&yamls)
            .output()
            .unwrap();
        assert!(out.status.success(), "yamllint:\n{}", text(&out));
    } else {
        skipped("yamllint of deploy/kubernetes", "yamllint");
    }
    let Some(validate) = which("kubernetes-validate") else {
        return skipped(
            "kubernetes-validate of deploy/kubernetes",
            "kubernetes-validate",
        );
    };
    // Every file: the core kinds must pass against the API's schemas. For a custom resource
    // kubernetes-validate warns that it has no schema and gives no verdict; that warning is
    // required for exactly the CRD groups, so a core kind with a typo cannot slip through as
    // one, and the tests below check the custom resources' fields themselves.
    for version in ["1.28.0", "1.33.0"] {
        let out = Command::new(&validate)
            .args(["--strict", "-k", version])
            .args(&yamls)
            .output()
            .unwrap();
        let said = text(&out);
        assert!(
            out.status.success(),
            "kubernetes-validate {version}:\n{said}"
        );
        for path in &yamls {
            let doc: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let about = format!("{} ", path.display());
            let lines: Vec<&str> = said.lines().filter(|l| l.contains(&about)).collect();
            let expected = if CRD_GROUPS.contains(&api_group(&doc)) {
                format!(
                    "WARN {about}Couldn't find schema for kind {}",
                    doc["kind"].as_str().unwrap()
                )
            } else {
                format!("INFO {about}passed ")
            };
            assert!(
                lines.len() == 1 && lines[0].starts_with(&expected),
                "kubernetes-validate {version} on {}: expected {expected:?}:\n{said}",
                path.display()
            );
        }
    }
}

/// A ConfigMap's `proxy.yaml`, written to `dir`.
fn configmap_proxy_yaml(name: &str, dir: &Path) -> PathBuf {
    let cm = manifest(name);
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, cm["data"]["proxy.yaml"].as_str().unwrap()).unwrap();
    path
}

/// `proxyd check` passes on a ConfigMap's proxy.yaml with the token from the Secret, and
/// fails by name without it: a pod without the Secret never starts on an open admin.
fn check_needs_admin_token(path: &Path, env: &[(&str, &str)]) {
    let check = |token: Option<&str>| {
        let mut cmd = Command::new(proxyd_bin());
        cmd.arg("check").arg("-c").arg(path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        match token {
            Some(t) => cmd.env("PROXYD_ADMIN_TOKEN", t),
            None => cmd.env_remove("PROXYD_ADMIN_TOKEN"),
        };
        cmd.output().unwrap()
    };
    let out = check(Some("s3cret"));
    assert!(out.status.success(), "{}", text(&out));
    let out = check(None);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("PROXYD_ADMIN_TOKEN is not set"),
        "{}",
        text(&out)
    );
}

/// The port of a `host:port` listen address.
fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// A container's port named `name`.
fn container_port(c: &Value, name: &str) -> u64 {
    c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// The seconds of a container's `preStop: exec: sleep N`.
fn pre_stop_sleep(c: &Value) -> f64 {
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap();
    assert_eq!(pre_stop[0], "sleep");
    pre_stop[1].as_str().unwrap().parse().unwrap()
}

/// The admin listener binds the pod's IP (probes and scrapes come there) and has a token.
fn admin_on_pod_ip(cfg: &proxyd::config::Config) -> u64 {
    let admin = cfg.admin.as_ref().unwrap();
    assert!(
        admin.addr.value.starts_with("0.0.0.0:"),
        "probes come to the pod IP"
    );
    assert!(
        admin.token.is_some(),
        "an admin on the pod IP needs the token"
    );
    port_of(&admin.addr.value)
}

/// The pod template's Prometheus annotations name the admin port, and its container takes
/// the token from the `proxyd-admin` Secret.
fn scraped_and_token_from_secret(pod: &Value, admin_port: u64) {
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], admin_port.to_string());
    assert_eq!(ann["prometheus.io/path"], "/metrics");
    let c = &pod["spec"]["containers"][0];
    assert_eq!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "PROXYD_ADMIN_TOKEN")
            .unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "proxyd-admin"
    );
}

/// A Service that publishes the pods' `http` port alone (never the admin's).
fn publishes_http_only(svc: &Value, admin_port: u64) {
    let ports = svc["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["targetPort"], "http");
    for p in ports {
        assert!(
            p["name"] != "admin"
                && p["targetPort"] != "admin"
                && p["targetPort"].as_u64() != Some(admin_port)
                && p["port"].as_u64() != Some(admin_port),
            "the Service publishes the admin port: {p:?}"
        );
    }
}

/// Whether a label selector (`matchLabels` or a Service's `selector`) picks pods with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels[k.as_str()] == *v)
}

#[test]
fn kubernetes_config_probes_and_grace_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = configmap_proxy_yaml("configmap.yaml", dir.path());
    std::fs::copy(repo().join("examples/app.py"), dir.path().join("app.py")).unwrap();
    let app_dir = dir.path().to_str().unwrap();
    check_needs_admin_token(&path, &[("APP_DIR", app_dir)]);
    let cfg = sample(
        &path,
        &[("PROXYD_ADMIN_TOKEN", "s3cret"), ("APP_DIR", app_dir)],
    );
    let admin_port = admin_on_pod_ip(&cfg);
    let http_port = port_of(&cfg.listen[0].addr.value);

    let deploy = manifest("deployment.yaml");
    let pod = &deploy["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    assert_eq!(container_port(c, "admin"), admin_port);
    assert_eq!(container_port(c, "http"), http_port);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    scraped_and_token_from_secret(pod, admin_port);
    let ann = &pod["metadata"]["annotations"];
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());

    // preStop sleep, then proxyd's whole drain, inside the grace period.
    let sleep = pre_stop_sleep(c);
    let w = cfg.upstreams["app"].workers.as_ref().unwrap();
    let drain = (cfg.timeouts.shutdown_grace + w.graceful_timeout + w.kill_timeout).as_secs_f64();
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .unwrap();
    assert!(
        grace > sleep + drain,
        "terminationGracePeriodSeconds {grace} <= preStop {sleep} + drain {drain}"
    );

    // The Service, PDB, HPA and ServiceMonitor select these pods and use these ports.
    let labels = &pod["metadata"]["labels"];
    let svc = manifest("service.yaml");
    assert_eq!(&svc["spec"]["selector"], labels);
    // The Service publishes the app's port only: the admin listener (metrics, status, the
    // token-guarded POSTs) is reached on the pod's IP by the kubelet and Prometheus alone.
    publishes_http_only(&svc, admin_port);
    assert_eq!(
        &manifest("pdb.yaml")["spec"]["selector"]["matchLabels"],
        labels
    );
    let hpa = manifest("hpa.yaml");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deploy["metadata"]["name"]
    );
    // The ServiceMonitor scrapes the pods' admin container port (Prometheus discovers the
    // selected Service's pods with all their declared ports), not a Service port.
    let sm = manifest("prometheus-operator/servicemonitor.yaml");
    assert_eq!(
        &sm["spec"]["selector"]["matchLabels"],
        &svc["metadata"]["labels"]
    );
    let endpoints = sm["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["targetPort"], "admin");
    assert_eq!(endpoints[0]["path"], ann["prometheus.io/path"]);
    assert!(endpoints[0]["port"].is_null(), "{endpoints:?}");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: the edge layout (the app behind a headless Service that proxyd-edge discovers)
// ---------------------------------------------------------------------------------------------

/// How long CoreDNS keeps giving out an answer for a cluster name: kubeadm's Corefile sets the
/// kubernetes plugin's `ttl 30` (the plugin's own default is 5 s), and the cache plugin holds
/// an answer for its TTL.
const COREDNS_TTL: f64 = 30.0;

/// The value of a `--name=value` argument.
fn flag(args: &Value, name: &str) -> String {
    let prefix = format!("{name}=");
    args.as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in {args}"))
        .to_string()
}

#[test]
fn kubernetes_edge_layout_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let path = configmap_proxy_yaml("edge/configmap.yaml", dir.path());
    // `proxyd check` never looks names up: app-headless need not resolve here.
    check_needs_admin_token(&path, &[]);
    let cfg = sample(&path, &[("PROXYD_ADMIN_TOKEN", "s3cret")]);
    let admin_port = admin_on_pod_ip(&cfg);
    let up = &cfg.upstreams["app"];
    assert!(up.workers.is_none(), "the edge launches no workers");

    // The app's pods: the headless Service by its short name, on the pods' own port.
    let app = manifest("edge/app-deployment.yaml");
    let app_pod = &app["spec"]["template"];
    let ac = &app_pod["spec"]["containers"][0];
    let headless = manifest("edge/app-service.yaml");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert!(selects(
        &headless["spec"]["selector"],
        &app_pod["metadata"]["labels"]
    ));
    assert_eq!(up.servers.len(), 1);
    let (host, port) = up.servers[0].value.rsplit_once(':').unwrap();
    assert_eq!(
        host, headless["metadata"]["name"],
        "the short name, by the search list"
    );
    let app_port = container_port(ac, "http");
    assert_eq!(port.parse::<u64>().unwrap(), app_port);
    let svc_ports = headless["spec"]["ports"].as_array().unwrap();
    assert_eq!(svc_ports[0]["port"].as_u64(), Some(app_port));
    assert_eq!(svc_ports[0]["targetPort"], "http");
    assert_eq!(flag(&ac["args"], "--bind"), format!("0.0.0.0:{app_port}"));
    // proxyd checks the path the kubelet's readiness probe checks, and caps what it sends.
    let health = up.health.as_ref().expect("health checks on the app's pods");
    assert_eq!(
        health.path.as_ref().unwrap().value,
        ac["readinessProbe"]["httpGet"]["path"].as_str().unwrap()
    );
    assert_eq!(ac["readinessProbe"]["httpGet"]["port"], "http");
    let concurrency = up.concurrency.as_ref().expect("a cap per app pod").value as u64;
    let threads: u64 = flag(&ac["args"], "--workers").parse::<u64>().unwrap()
        * flag(&ac["args"], "--threads").parse::<u64>().unwrap();
    let proxies = manifest("edge/deployment.yaml")["spec"]["replicas"]
        .as_u64()
        .unwrap();
    assert!(
        concurrency * proxies < threads,
        "{proxies} replicas x {concurrency} leave no thread of {threads} for the probes"
    );

    // Asking again no later than CoreDNS's TTL, as soon as 1 s when the TTL says so.
    let min = cfg.discovery.min_refresh().as_secs_f64();
    let max = cfg.discovery.max_refresh().as_secs_f64();
    assert!(max <= COREDNS_TTL && min <= 5.0, "{min} {max}");
    // A terminating app pod serves until proxyd-edge has had the answer without it, then
    // gunicorn gets its graceful time-out, inside the grace period.
    let sleep = pre_stop_sleep(ac);
    assert!(sleep >= COREDNS_TTL + min, "preStop sleep {sleep}");
    let graceful: f64 = flag(&ac["args"], "--graceful-timeout").parse().unwrap();
    let app_grace = app_pod["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .unwrap();
    assert!(
        app_grace > sleep + graceful,
        "{app_grace} <= {sleep} + {graceful}"
    );

    // proxyd-edge: readiness on the traffic port's health_path; shutdown_delay instead of a
    // preStop sleep, longer than the probe takes to see the 503.
    let deploy = manifest("edge/deployment.yaml");
    let pod = &deploy["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    let listen = &cfg.listen[0];
    assert_eq!(container_port(c, "http"), port_of(&listen.addr.value));
    assert_eq!(container_port(c, "admin"), admin_port);
    let health_path = &listen.health_path.as_ref().unwrap().value;
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], health_path.as_str());
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    assert!(
        c["lifecycle"].is_null(),
        "shutdown_delay does the preStop's work"
    );
    let delay = cfg.timeouts.shutdown_delay.as_secs_f64();
    let probe = &c["readinessProbe"];
    let unready_after =
        probe["periodSeconds"].as_f64().unwrap() * probe["failureThreshold"].as_f64().unwrap();
    assert!(
        delay >= unready_after,
        "shutdown_delay {delay} < {unready_after}"
    );
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .unwrap();
    let drain = delay + cfg.timeouts.shutdown_grace.as_secs_f64();
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds {grace} <= {drain}"
    );
    scraped_and_token_from_secret(pod, admin_port);
    assert_eq!(
        pod["spec"]["volumes"][0]["configMap"]["name"],
        manifest("edge/configmap.yaml")["metadata"]["name"]
    );

    // Services, PDBs and HPAs pick the right pods and Deployments.
    let labels = &pod["metadata"]["labels"];
    let svc = manifest("edge/service.yaml");
    assert!(selects(&svc["spec"]["selector"], labels));
    publishes_http_only(&svc, admin_port);
    for (pdb, hpa, d) in [
        ("edge/pdb.yaml", "edge/hpa.yaml", &deploy),
        ("edge/app-pdb.yaml", "edge/app-hpa.yaml", &app),
    ] {
        let pods = &d["spec"]["template"]["metadata"]["labels"];
        assert!(selects(
            &manifest(pdb)["spec"]["selector"]["matchLabels"],
            pods
        ));
        assert_eq!(
            manifest(hpa)["spec"]["scaleTargetRef"]["name"],
            d["metadata"]["name"]
        );
    }
    // Both layouts can share a namespace: no name in common, and no selector of one picks
    // the other's pods.
    let other = &manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"];
    for (selector, pods) in [
        (&manifest("service.yaml")["spec"]["selector"], labels),
        (
            &manifest("pdb.yaml")["spec"]["selector"]["matchLabels"],
            labels,
        ),
        (&svc["spec"]["selector"], other),
        (&headless["spec"]["selector"], other),
    ] {
        assert!(!selects(selector, pods), "{selector} picks {pods}");
    }
    let names = |dir: &Path| -> Vec<(String, String)> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .filter(|p| !p.ends_with(".yamllint.yaml"))
            .map(|p| {
                let doc: Value =
                    serde_saphyr::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                (
                    doc["kind"].as_str().unwrap().to_string(),
                    doc["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let sidecar_less = names(&k8s_dir());
    for name in names(&k8s_dir().join("edge")) {
        assert!(!sidecar_less.contains(&name), "{name:?} in both layouts");
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: autoscaling on proxyd's queue wait (prometheus-adapter, or KEDA)
// ---------------------------------------------------------------------------------------------

/// A Kubernetes quantity as a number ("100m" is 0.1).
fn quantity(q: &str) -> f64 {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().unwrap() / 1000.0,
        None => q.parse().unwrap(),
    }
}

/// The HPA metric of `kind` (Pods, External, Resource).
fn hpa_metric<'a>(hpa: &'a Value, kind: &str) -> &'a Value {
    hpa["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} metric in {hpa}"))
}

/// prometheus-adapter's config (the ConfigMap's config.yaml).
fn adapter_config() -> Value {
    let cm = manifest("queue-wait/prometheus-adapter.yaml");
    serde_saphyr::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap()
}

/// The PromQL each autoscaler has Prometheus run, as (what, expression): the adapter's
/// templates filled in as it fills them for an HPA in namespace "default" (`pods` for the
/// pods metric's pods), and KEDA's queries as written.
fn queue_wait_queries(pods: &str) -> Vec<(String, String)> {
    let adapter = adapter_config();
    let fill = |rule: &Value, matchers: &str, group_by: &str| {
        let series = rule["seriesQuery"].as_str().unwrap();
        let name = series.split('{').next().unwrap();
        rule["metricsQuery"]
            .as_str()
            .unwrap()
            .replace("<<.Series>>", name)
            .replace("<<.LabelMatchers>>", matchers)
            .replace("<<.GroupBy>>", group_by)
    };
    let mut out = vec![
        (
            "adapter pods metric".to_string(),
            fill(
                &adapter["rules"][0],
                &format!("namespace=\"default\",pod=~\"{pods}\""),
                "pod",
            ),
        ),
        (
            "adapter external metric".to_string(),
            fill(
                &adapter["externalRules"][0],
                "namespace=\"default\",upstream=\"app\"",
                "",
            ),
        ),
    ];
    for file in ["queue-wait/keda-proxyd.yaml", "queue-wait/keda-app.yaml"] {
        let so = manifest(file);
        let trigger = so["spec"]["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "prometheus")
            .unwrap()
            .clone();
        out.push((
            file.to_string(),
            trigger["metadata"]["query"].as_str().unwrap().to_string(),
        ));
    }
    out
}

#[test]
fn kubernetes_queue_wait_autoscalers_agree() {
    let adapter = adapter_config();
    let pods_metric = adapter["rules"][0]["name"]["as"].as_str().unwrap();
    let external_metric = adapter["externalRules"][0]["name"]["as"].as_str().unwrap();
    for rule in [&adapter["rules"][0], &adapter["externalRules"][0]] {
        assert!(rule["seriesQuery"]
            .as_str()
            .unwrap()
            .starts_with("proxyd_queue_wait_seconds_bucket{"));
        assert_eq!(
            rule["resources"]["overrides"]["namespace"]["resource"],
            "namespace"
        );
    }
    assert_eq!(
        adapter["rules"][0]["resources"]["overrides"]["pod"]["resource"],
        "pod"
    );

    // Each HPA replaces its layout's CPU-only one (same name, same target, same bounds) and
    // keeps CPU beside the queue: a wait of 0 alone would ask for minReplicas.
    let edge_upstream = {
        let dir = tempfile::tempdir().unwrap();
        let path = configmap_proxy_yaml("edge/configmap.yaml", dir.path());
        let cfg = sample(&path, &[("PROXYD_ADMIN_TOKEN", "s3cret")]);
        cfg.upstreams.keys().next().unwrap().clone()
    };
    let mut targets = Vec::new();
    for (file, replaces, kind) in [
        ("queue-wait/hpa-proxyd.yaml", "hpa.yaml", "Pods"),
        ("queue-wait/hpa-app.yaml", "edge/app-hpa.yaml", "External"),
    ] {
        let hpa = manifest(file);
        let old = manifest(replaces);
        assert_eq!(hpa["metadata"]["name"], old["metadata"]["name"], "{file}");
        for key in ["scaleTargetRef", "minReplicas", "maxReplicas"] {
            assert_eq!(hpa["spec"][key], old["spec"][key], "{file}: {key}");
        }
        assert_eq!(
            hpa_metric(&hpa, "Resource"),
            hpa_metric(&old, "Resource"),
            "{file}"
        );
        let m = hpa_metric(&hpa, kind);
        let target = match kind {
            "Pods" => {
                assert_eq!(m["pods"]["metric"]["name"], pods_metric);
                assert_eq!(m["pods"]["target"]["type"], "AverageValue");
                quantity(m["pods"]["target"]["averageValue"].as_str().unwrap())
            }
            _ => {
                assert_eq!(m["external"]["metric"]["name"], external_metric);
                assert_eq!(
                    m["external"]["metric"]["selector"]["matchLabels"]["upstream"],
                    edge_upstream.as_str()
                );
                // A latency over the fleet: not divided by the replica count.
                assert_eq!(m["external"]["target"]["type"], "Value");
                quantity(m["external"]["target"]["value"].as_str().unwrap())
            }
        };
        assert!(target > 0.0 && target < 1.0, "{file}: {target} s");
        targets.push((old, target));
    }
    // The sidecar-less HPA scales proxyd (whose pods hold the workers); the edge's scales
    // the app, not proxyd-edge.
    assert_eq!(
        targets[0].0["spec"]["scaleTargetRef"]["name"],
        manifest("deployment.yaml")["metadata"]["name"]
    );
    assert_eq!(
        targets[1].0["spec"]["scaleTargetRef"]["name"],
        manifest("edge/app-deployment.yaml")["metadata"]["name"]
    );

    // KEDA's alternatives: the same targets, bounds and thresholds; trigger metadata is a
    // map of strings to KEDA.
    for ((file, query), (old, target)) in queue_wait_queries("")[2..].iter().zip(&targets) {
        let so = manifest(file);
        assert_eq!(
            so["spec"]["scaleTargetRef"]["name"],
            old["spec"]["scaleTargetRef"]["name"]
        );
        assert_eq!(so["spec"]["minReplicaCount"], old["spec"]["minReplicas"]);
        assert_eq!(so["spec"]["maxReplicaCount"], old["spec"]["maxReplicas"]);
        let triggers = so["spec"]["triggers"].as_array().unwrap();
        for t in triggers {
            for (k, v) in t["metadata"].as_object().unwrap() {
                assert!(v.is_string(), "{file}: {k} is not a string");
            }
        }
        let prom = triggers.iter().find(|t| t["type"] == "prometheus").unwrap();
        assert_eq!(prom["metricType"], "Value", "{file}");
        let threshold: f64 = prom["metadata"]["threshold"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(threshold, *target, "{file}");
        assert!(
            query.contains(&format!("upstream=\"{edge_upstream}\"")),
            "{file}"
        );
        let cpu = triggers.iter().find(|t| t["type"] == "cpu").unwrap();
        assert_eq!(cpu["metricType"], "Utilization");
        let old_cpu = &hpa_metric(old, "Resource")["resource"]["target"]["averageUtilization"];
        assert_eq!(cpu["metadata"]["value"], old_cpu.to_string());
    }
}

/// Every metric and label a PromQL expression selects: (metric, label names).
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    use promql_parser::parser::Expr;
    fn walk(e: &Expr, out: &mut Vec<(String, Vec<String>)>) {
        let mut push = |v: &promql_parser::parser::VectorSelector| {
            let labels = v.matchers.matchers.iter().map(|m| m.name.clone()).collect();
            out.push((v.name.clone().unwrap_or_default(), labels));
        };
        match e {
            Expr::Aggregate(a) => walk(&a.expr, out),
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                walk(&b.rhs, out);
            }
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Subquery(s) => walk(&s.expr, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
            Expr::VectorSelector(v) => push(v),
            Expr::MatrixSelector(m) => push(&m.vs),
            _ => {}
        }
    }
    let parsed = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{e}: {expr}"));
    let mut out = Vec::new();
    walk(&parsed, &mut out);
    out
}

#[test]
fn queue_wait_queries_give_the_90th_percentile_and_0_when_idle() {
    let Some(promtool) = which("promtool") else {
        return skipped("promtool on the queue-wait queries", "promtool");
    };
    let queries = queue_wait_queries("proxyd-a|proxyd-b");
    let dir = tempfile::tempdir().unwrap();
    let rules: Vec<String> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, q))| {
            format!(
                "      - record: q{i}\n        expr: {}\n",
                serde_json::to_string(q).unwrap()
            )
        })
        .collect();
    std::fs::write(
        dir.path().join("rules.yaml"),
        format!(
            "groups:\n  - name: queue-wait\n    rules:\n{}",
            rules.concat()
        ),
    )
    .unwrap();
    // Pod a: 10 requests every 15 s, each waited between 0.1 and 0.25 s (p90: 0.235 s by
    // linear interpolation in that bucket); pod b idle. Then both idle.
    let series = |pod: &str, busy: bool| -> String {
        [("0.1", 0), ("0.25", 10), ("+Inf", 10)]
            .iter()
            .map(|(le, n)| {
                let n = if busy { *n } else { 0 };
                format!(
                    "      - series: 'proxyd_queue_wait_seconds_bucket{{namespace=\"default\",pod=\"{pod}\",upstream=\"app\",le=\"{le}\"}}'\n        values: '0+{n}x20 {}x20'\n",
                    20 * n
                )
            })
            .collect()
    };
    // One series of a recorded query (`labels` selects it) within 1e-9 of `value`.
    let near = |q: usize, at: &str, value: f64, labels: &str| {
        let series = if labels == "{}" {
            format!("q{q}")
        } else {
            format!("q{q}{labels}")
        };
        format!(
            "      - expr: 'abs({series} - {value}) < bool 1e-9'\n        eval_time: {at}\n        exp_samples:\n          - labels: '{labels}'\n            value: 1\n"
        )
    };
    let mut checks = String::new();
    // While a is busy: the pods metric per pod (b: 0, not NaN), the others over the fleet.
    checks += &near(0, "4m", 0.235, "{pod=\"proxyd-a\"}");
    checks += &near(0, "4m", 0.0, "{pod=\"proxyd-b\"}");
    checks += &near(1, "4m", 0.235, "{upstream=\"app\"}");
    checks += &near(2, "4m", 0.235, "{}");
    checks += &near(3, "4m", 0.235, "{}");
    // Minutes after the last request: 0 everywhere, a value the HPA can use.
    checks += &near(0, "9m", 0.0, "{pod=\"proxyd-a\"}");
    checks += &near(0, "9m", 0.0, "{pod=\"proxyd-b\"}");
    checks += &near(1, "9m", 0.0, "{upstream=\"app\"}");
    checks += &near(2, "9m", 0.0, "{}");
    checks += &near(3, "9m", 0.0, "{}");
    std::fs::write(
        dir.path().join("test.yaml"),
        format!(
            "rule_files: [rules.yaml]\nevaluation_interval: 15s\ntests:\n  - interval: 15s\n    input_series:\n{}{}    promql_expr_test:\n{checks}",
            series("proxyd-a", true),
            series("proxyd-b", false)
        ),
    )
    .unwrap();
    let out = Command::new(&promtool)
        .args(["test", "rules", "test.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}\n{}",
        text(&out),
        std::fs::read_to_string(dir.path().join("test.yaml")).unwrap()
    );
}

/// The demo app (examples/app.py) on 127.0.0.2, .3 and .4 on one port, as containers on
/// addresses of their own run it (APP_HOST, PORT); killed on drop.
struct Apps {
    port: u16,
    children: Vec<Child>,
}

impl Drop for Apps {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const APP_IPS: [std::net::Ipv4Addr; 3] = [
    std::net::Ipv4Addr::new(127, 0, 0, 2),
    std::net::Ipv4Addr::new(127, 0, 0, 3),
    std::net::Ipv4Addr::new(127, 0, 0, 4),
];

async fn apps_on_three_addresses() -> Apps {
    'port: for _ in 0..20 {
        // A port free on all three; it is let go for the apps to bind (one that loses the
        // race exits, and another port is tried).
        let port = {
            let first = std::net::TcpListener::bind((APP_IPS[0], 0)).unwrap();
            let port = first.local_addr().unwrap().port();
            let others: Vec<_> = APP_IPS[1..]
                .iter()
                .map(|ip| std::net::TcpListener::bind((*ip, port)))
                .collect();
            if others.iter().any(|l| l.is_err()) {
                continue;
            }
            port
        };
        let mut apps = Apps {
            port,
            children: Vec::new(),
        };
        for ip in APP_IPS {
            let child = Command::new(python())
                .arg(repo().join("examples/app.py"))
                .env("APP_HOST", ip.to_string())
                .env("PORT", port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            apps.children.push(child);
        }
        let deadline = std::time::Instant::now() + PATIENCE;
        for (i, ip) in APP_IPS.iter().enumerate() {
            while tokio::net::TcpStream::connect((*ip, port)).await.is_err() {
                if apps.children[i].try_wait().unwrap().is_some() {
                    continue 'port;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "app on {ip} never listened"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        return apps;
    }
    panic!("no port free on 127.0.0.2, .3 and .4 at once");
}

/// Polls the admin's /status until upstream `app` has `n` backends whose checks pass.
async fn wait_healthy(admin: SocketAddr, n: usize) -> Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let got = get_within(admin, "/status").await;
        let s: Value = serde_json::from_slice(&got.body).unwrap();
        let app = s["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "app")
            .unwrap()
            .clone();
        let healthy = app["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["health"]["state"] == "healthy")
            .count();
        if healthy == n {
            return app;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{healthy} healthy backends, not {n}: {app:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sample config's text for this machine: `edits` (each `from` must be there) and the test's
/// DNS responder as the name server, standing in for the pod's or container's resolv.conf.
fn edited(text: &str, edits: &[(&str, String)], dns: SocketAddr) -> String {
    let mut out = text.to_string();
    for (from, to) in edits {
        assert!(out.contains(from), "{from:?} is not in:\n{text}");
        out = out.replacen(from, to, 1);
    }
    out + &format!("resolver:\n  nameservers: [\"{dns}\"]\n")
}

#[tokio::test]
async fn kubernetes_edge_config_serves_the_pods_its_dns_names() {
    let apps = apps_on_three_addresses().await;
    let dns = common::dns::Dns::start().await;
    // The headless Service's answer: every ready pod, CoreDNS's TTL.
    dns.set_a("app-headless", &APP_IPS, COREDNS_TTL as u32);
    let cm = manifest("edge/configmap.yaml");
    let yaml = edited(
        cm["data"]["proxy.yaml"].as_str().unwrap(),
        &[
            ("0.0.0.0:8080", "127.0.0.1:0".into()),
            ("0.0.0.0:9901", "127.0.0.1:0".into()),
            ("app-headless:8000", format!("app-headless:{}", apps.port)),
        ],
        dns.addr,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let mut cmd = Command::new(proxyd_bin());
    cmd.arg("-c").arg(&path).env("PROXYD_ADMIN_TOKEN", "s3cret");
    let proxyd = Running::spawn(cmd);
    let addr = proxyd.addr();
    let admin = proxyd.admin_addr();
    let app = wait_healthy(admin, 3).await;
    let mut seen: Vec<String> = app["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    let want: Vec<String> = APP_IPS
        .iter()
        .map(|ip| format!("{ip}:{}", apps.port))
        .collect();
    assert_eq!(seen, want);
    for _ in 0..6 {
        let got = get_within(addr, "/").await;
        assert_eq!(got.status, 200, "{got:?}");
        assert!(got.text().starts_with("hello from pid "), "{}", got.text());
    }
    let health = get_within(addr, "/healthz").await;
    assert_eq!(health.status, 200, "{health:?}");

    // The queue-wait autoscalers' queries select what proxyd's scrape has (namespace and
    // pod are the scrape's target labels).
    let scrape = get_within(admin, "/metrics").await.text();
    for (what, query) in queue_wait_queries("proxyd-.*") {
        for (metric, labels) in selectors(&query) {
            let lines: Vec<&str> = scrape
                .lines()
                .filter(|l| l.starts_with(&format!("{metric}{{")))
                .collect();
            assert!(!lines.is_empty(), "{what}: {metric} is not in the scrape");
            for label in labels {
                let target = ["namespace", "pod", "job", "instance"].contains(&label.as_str());
                assert!(
                    target || lines[0].contains(&format!("{label}=\"")),
                    "{what}: {metric} has no label {label}: {}",
                    lines[0]
                );
            }
        }
    }

    // SIGTERM: the traffic port's health path says 503 at once, while requests are still
    // served for shutdown_delay (the readiness probe and the load balancer catch up).
    proxyd.signal("TERM");
    let deadline = std::time::Instant::now() + PATIENCE;
    while get_within(addr, "/healthz").await.status != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "health_path never said 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get_within(addr, "/").await.status, 200);
    drop(proxyd);
}

// ---------------------------------------------------------------------------------------------
// Compose: proxyd in front of N app replicas through Docker's DNS
// ---------------------------------------------------------------------------------------------

fn compose_dir() -> PathBuf {
    repo().join("deploy/compose")
}

/// `docker compose config` (the plugin) or `docker-compose config` (Debian's package), if
/// either is installed.
fn compose_config_command() -> Option<Command> {
    if let Some(docker) = which("docker") {
        let plugin = Command::new(&docker).args(["compose", "version"]).output();
        if plugin.is_ok_and(|o| o.status.success()) {
            let mut cmd = Command::new(docker);
            cmd.arg("compose");
            return Some(cmd);
        }
    }
    which("docker-compose").map(Command::new)
}

#[test]
fn compose_file_is_valid_and_agrees_with_its_proxy_yaml() {
    let file = compose_dir().join("compose.yaml");
    let compose: Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let services = &compose["services"];
    let (proxy, app) = (&services["proxyd"], &services["app"]);
    // Each bind mount's source is in the repository.
    let mounts = |svc: &Value| -> Vec<(String, String)> {
        svc["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let parts: Vec<&str> = v.as_str().unwrap().split(':').collect();
                assert!(compose_dir().join(parts[0]).exists(), "{v}: no such file");
                (parts[0].to_string(), parts[1].to_string())
            })
            .collect()
    };
    let config_mount = mounts(proxy);
    assert_eq!(config_mount[0].1, "/etc/proxyd/proxy.yaml");
    let app_mount = mounts(app);
    assert_eq!(
        compose_dir().join(&app_mount[0].0).canonicalize().unwrap(),
        repo().join("examples/app.py").canonicalize().unwrap()
    );
    assert_eq!(app["command"][1], app_mount[0].1.as_str());
    assert_eq!(
        proxy["build"]["dockerfile"], "deploy/docker/Dockerfile",
        "the image deploy/docker builds"
    );
    assert!(
        proxy["depends_on"].is_null(),
        "a name that resolves late is no error"
    );
    assert!(app["deploy"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(app["init"], true, "SIGTERM must reach the app");
    assert_eq!(app["environment"]["APP_HOST"], "0.0.0.0");

    let config = compose_dir().join(&config_mount[0].0);
    let (ok, out) = common::check_path(&config);
    assert!(ok, "{out}");
    let cfg = sample(&config, &[]);
    let up = &cfg.upstreams["app"];
    // The service's name, on the port its replicas listen on; Docker's resolv.conf, no
    // name servers of its own.
    assert_eq!(
        up.servers[0].value,
        format!("app:{}", app["environment"]["PORT"].as_str().unwrap())
    );
    assert!(cfg.resolver.nameservers.is_empty());
    // Docker's DNS answers with a TTL of 600 s: a new replica must be found much sooner.
    assert!(cfg.discovery.max_refresh() <= Duration::from_secs(5));
    assert!(
        up.health.is_some(),
        "a new replica joins after a passing check"
    );
    assert_eq!(
        up.concurrency.as_ref().map(|c| c.value),
        Some(1),
        "the demo app serves one request at a time"
    );

    if let Some(yamllint) = which("yamllint") {
        let out = Command::new(yamllint)
            .arg("--strict")
            .arg("-c")
            .arg(k8s_dir().join(".yamllint.yaml"))
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "yamllint:\n{}", text(&out));
    } else {
        skipped("yamllint of deploy/compose", "yamllint");
    }
    let Some(mut cmd) = compose_config_command() else {
        return skipped("docker compose config of deploy/compose", "docker-compose");
    };
    let out = cmd
        .arg("-f")
        .arg(&file)
        .args(["config", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "compose config:\n{}", text(&out));
}

#[tokio::test]
async fn compose_config_finds_a_replica_added_despite_dockers_ttl() {
    let apps = apps_on_three_addresses().await;
    let dns = common::dns::Dns::start().await;
    // Docker's embedded DNS: the service name answers with every replica, TTL 600 s.
    dns.set_a("app", &APP_IPS[..2], 600);
    let yaml = edited(
        &std::fs::read_to_string(compose_dir().join("proxy.yaml")).unwrap(),
        &[("app:8000", format!("app:{}", apps.port))],
        dns.addr,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let mut cmd = Command::new(proxyd_bin());
    cmd.arg("-c")
        .arg(&path)
        .env("PORT", "0")
        .env("PROXYD_ADMIN_PORT", "0");
    let proxyd = Running::spawn(cmd);
    let addr = proxyd.addr();
    let admin = proxyd.admin_addr();
    wait_healthy(admin, 2).await;
    assert_eq!(get_within(addr, "/").await.status, 200);
    // `docker compose up --scale app=3`: found within max_refresh, not the TTL's 10 minutes
    // (PATIENCE bounds the wait).
    dns.set_a("app", &APP_IPS, 600);
    wait_healthy(admin, 3).await;
    assert_eq!(get_within(addr, "/").await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Every sample config passes `proxyd check`
// ---------------------------------------------------------------------------------------------

#[test]
fn sample_configs_pass_proxyd_check() {
    let app_dir = tempfile::tempdir().unwrap();
    for (config, env) in [
        (eb_dir().join("proxy.yaml"), vec![]),
        (eb_dir().join("proxy-none/proxy.yaml"), vec![]),
        (
            repo().join("deploy/docker/proxy.yaml"),
            vec![("APP_DIR", app_dir.path().to_str().unwrap())],
        ),
        (repo().join("deploy/compose/proxy.yaml"), vec![]),
    ] {
        let mut cmd = Command::new(proxyd_bin());
        cmd.arg("check").arg("-c").arg(&config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}: {}", config.display(), text(&out));
    }
}

// ---------------------------------------------------------------------------------------------
// Whose word the samples take: the load balancer's, the ingress's
// ---------------------------------------------------------------------------------------------

/// A sample config, loaded as proxyd loads it (`vars` for what the environment would say).
fn sample(path: &Path, vars: &[(&str, &str)]) -> proxyd::config::Config {
    let text = std::fs::read_to_string(path).unwrap();
    let expanded = proxyd::config::load::expand_env(&text, "sample", |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
    .unwrap();
    proxyd::config::load_str_with(
        &expanded,
        &path.display().to_string(),
        path.parent().unwrap().to_path_buf(),
        proxyd::config::Checks { programs: false },
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .config
}

#[test]
fn samples_trust_the_load_balancer_and_the_ingress_not_the_client() {
    use proxyd::limits::ClientPolicy;
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    let xff = |v: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    };
    let k8s = tempfile::tempdir().unwrap();
    let k8s_yaml = k8s.path().join("proxy.yaml");
    std::fs::write(
        &k8s_yaml,
        manifest("configmap.yaml")["data"]["proxy.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    // (config, what connects to proxyd: the load balancer or ingress itself, or the
    // instance's nginx in front of it)
    let samples = [
        (eb_dir().join("proxy.yaml"), true),
        (eb_dir().join("proxy-none/proxy.yaml"), false),
        (k8s_yaml, false),
    ];
    for (path, behind_nginx) in samples {
        let app_dir = k8s.path().to_str().unwrap();
        let cfg = sample(
            &path,
            &[("PROXYD_ADMIN_TOKEN", "s3cret"), ("APP_DIR", app_dir)],
        );
        let policy = ClientPolicy::from_config(&cfg);
        let name = path.display();
        // An ALB in the default VPC (172.31.0.0/16) or any VPC's private range; an ingress
        // controller's pod or a node after kube-proxy's SNAT (10.244.x flannel, 10.42.x k3s,
        // 192.168.x Calico).
        for proxy in [
            "172.31.40.2",
            "10.0.3.7",
            "10.244.1.5",
            "10.42.0.9",
            "192.168.7.20",
        ] {
            assert!(policy.is_trusted(ip(proxy)), "{name}: {proxy} untrusted");
        }
        // Clients: public addresses (a single-instance environment's, the internet's).
        for client in ["203.0.113.9", "8.8.8.8", "100.64.0.1", "2001:db8::1"] {
            assert!(!policy.is_trusted(ip(client)), "{name}: {client} trusted");
        }
        let trusted = policy.trusted.as_ref().unwrap();
        // The load balancer appends the address it saw to what the client sent: the client
        // is that address, not what it wrote itself.
        let (peer, header) = if behind_nginx {
            ("127.0.0.1", "1.2.3.4, 203.0.113.9, 172.31.40.2")
        } else {
            ("172.31.40.2", "1.2.3.4, 203.0.113.9")
        };
        assert_eq!(
            trusted.client_ip(ip(peer), &xff(header)),
            ip("203.0.113.9"),
            "{name}"
        );
        // A client that connects directly is itself, whatever it writes.
        assert_eq!(
            trusted.client_ip(ip("203.0.113.9"), &xff("10.0.0.1")),
            ip("203.0.113.9"),
            "{name}"
        );
    }
}

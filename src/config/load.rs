//! Reading a config file: `${VAR}` expansion in values (`expand`), YAML parsing, and errors
//! that name the file, line and column.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::expand::{expand, hint_for, Expanded};
use super::types::Config;
use super::validate;

/// A config problem, located as precisely as it can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line and column, when the problem has a place in the file.
    pub at: Option<(u64, u64)>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &str, at: Option<(u64, u64)>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            at,
            message: message.into(),
        }
    }

    pub fn at(file: &str, loc: &serde_saphyr::Location, message: impl Into<String>) -> Self {
        ConfigError::new(file, Some((loc.line(), loc.column())), message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "{}:{}:{}: {}", self.file, line, col, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A parsed and validated configuration, with the directory relative paths resolve against.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub file: String,
    pub dir: PathBuf,
    /// A config made of flags (`proxyd run`, `proxyd proxy`): the arguments that made it, so
    /// an upgrade starts the new proxyd with them; None for a file.
    pub args: Option<Vec<std::ffi::OsString>>,
    /// Where `${VAR}` expansion moved the file's text, for errors found after loading.
    pub places: Places,
}

/// Maps a place in the expanded text back to the file's own line and column.
#[derive(Debug, Clone, Default)]
pub struct Places(Option<Arc<Expanded>>);

impl Loaded {
    /// `err`, its place moved from the expanded text to the file as written: for errors found
    /// by the parts built from this config (`proxyd check` builds them), located by the
    /// config's own spans.
    pub fn locate(&self, err: ConfigError) -> ConfigError {
        match &self.places.0 {
            Some(expanded) => expanded.locate(err),
            None => err,
        }
    }
}

/// Which checks beyond the file's own content run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// Each worker `command`'s program must exist (in the PATH, or relative to its cwd).
    /// Off for a check that runs before the app's dependencies are installed (an Elastic
    /// Beanstalk prebuild hook, before the platform's `pip install`).
    pub programs: bool,
}

impl Checks {
    /// Everything: what starting proxyd and a plain `proxyd check` need.
    pub const ALL: Checks = Checks { programs: true };
}

/// Reads, expands, parses and validates `path`.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    load_file_with(path, Checks::ALL)
}

/// [`load_file`] with only `checks` beyond the file's own content.
pub fn load_file_with(path: &Path, checks: Checks) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&file, None, format!("cannot read config file: {e}")))?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    load_str_with(&text, &file, dir, checks)
}

/// Parses and validates config text; `file` names it in errors, `dir` anchors relative paths.
///
/// ```
/// use proxyd::config::load_str;
///
/// let good = "listen:\n  - addr: \"127.0.0.1:8080\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:5001\"]\n";
/// assert!(load_str(good, "proxy.yaml", ".".into()).is_ok());
///
/// let typo = good.replace("servers", "server");
/// let err = load_str(&typo, "proxy.yaml", ".".into()).unwrap_err();
/// assert!(err.to_string().starts_with("proxy.yaml:5:5: unknown field `server`"), "{err}");
/// ```
pub fn load_str(text: &str, file: &str, dir: PathBuf) -> Result<Loaded, ConfigError> {
    load_str_with(text, file, dir, Checks::ALL)
}

/// [`load_str`] with only `checks` beyond the text's own content.
pub fn load_str_with(
    text: &str,
    file: &str,
    dir: PathBuf,
    checks: Checks,
) -> Result<Loaded, ConfigError> {
    let expanded = expand(text, file, |name| std::env::var(name).ok())?;
    let config: Config = serde_saphyr::from_str(&expanded.text).map_err(|e| {
        let at = e.location().map(|l| (l.line(), l.column()));
        let msg = strip_location(&e.without_snippet().to_string());
        let mut err = expanded.locate(ConfigError::new(file, at, msg));
        if let Some(hint) = err.at.and_then(|(line, _)| hint_for(text, line)) {
            err.message = format!("{}; {hint}", err.message);
        }
        err
    })?;
    let loaded = Loaded {
        config,
        file: file.to_string(),
        dir,
        args: None,
        places: Places::default(),
    };
    validate::validate_with(&loaded, checks).map_err(|e| expanded.locate(e))?;
    let written = super::written::Written::of(&expanded.text);
    validate::without_effect(&loaded, &written).map_err(|e| expanded.locate(e))?;
    Ok(Loaded {
        places: Places(Some(Arc::new(expanded))),
        ..loaded
    })
}

/// serde-saphyr appends " at line L, column C"; the location is already in front.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The config text with `${VAR}` and `${VAR:-default}` expanded in its values (see
/// [`super::expand`]); an error names the variable's place in the file.
pub fn expand_env(
    text: &str,
    file: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    expand(text, file, lookup).map(|e| e.text)
}

//! `routes[].basic_auth`: HTTP Basic authentication against an htpasswd file (nginx's
//! `auth_basic` + `auth_basic_user_file`).
//!
//! - The file holds `user:hash` lines in the formats Apache's `htpasswd` writes: bcrypt
//!   (`$2y$`, also `$2a$`/`$2b$`), Apache's MD5 (`$apr1$`), `{SHA}` (base64 of SHA-1) and
//!   crypt(3) (DES, 13 characters; glibc's `$1$`, `$5$`, `$6$`). Plain-text passwords
//!   (`htpasswd -p`, nginx's `{PLAIN}`) are refused: Apache on Unix does not take them either.
//!   Empty lines and `#` comments are skipped; a user listed twice is its first line.
//! - The file is looked at again (one `stat`) at most once a second by the requests that need
//!   it, and read again when its modification time, size or inode changed; a reload reads it
//!   anew. A file that disappears leaves no user (everyone 401) until it is back; a bad line
//!   in a changed file is skipped with a warning (`proxyd check` refuses it, naming the line).
//! - bcrypt and the crypt(3) family cost milliseconds on purpose: they run on tokio's
//!   blocking pool, never on the runtime's threads. Credentials verified once are kept, as a
//!   salted SHA-256 of `user:password` (never the password), in a small bounded cache that
//!   a change of the file empties, so a logged-in client costs one hash per request.
//! - Failed attempts (wrong password, unknown user, a malformed `Authorization`) take a token
//!   from a per-client limiter (`failures`, default `10/m`); a client with none left gets
//!   429 with `Retry-After` before its credentials are even looked at. A request without
//!   credentials (a browser's first, which brings up the login prompt) is no failure.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine as _;
use http::HeaderValue;
use sha2::Digest as _;

use super::htpasswd::Users;
use super::rate::RateLimiter;
use crate::config::{ConfigError, Loaded};
use crate::upstream::clock::now_ns;

/// Credentials kept as verified, at most.
const CACHE_MAX: usize = 1024;
/// The htpasswd file is looked at again at most this often (ns).
const RECHECK_NS: u64 = 1_000_000_000;

/// Why a request was refused; the `reason` label of `proxyd_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The `Authorization` header is not `Basic base64(user:password)`.
    Malformed,
    UnknownUser,
    WrongPassword,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Malformed => "malformed",
            Failure::UnknownUser => "unknown_user",
            Failure::WrongPassword => "wrong_password",
        }
    }
}

/// What `BasicAuth::check` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// No credentials: the challenge (not counted as a failure).
    Missing,
    Failed(Failure),
    /// Too many failures from this client: come back after this long.
    Limited(Duration),
}

/// What the file looked like when it was read: a change of any of these reads it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            modified: m.modified().ok(),
            len: m.len(),
            ino: m.ino(),
        }
    }
}

#[derive(Default)]
struct Cache {
    generation: u64,
    keys: HashSet<[u8; 32]>,
}

/// One route's basic auth: its file's users, the verified credentials, the failure limiter.
pub struct BasicAuth {
    /// `Basic realm="..."`.
    challenge: HeaderValue,
    path: PathBuf,
    users: ArcSwap<Users>,
    /// The file as last read (None: it was missing); behind a lock only the re-checker takes.
    stamp: Mutex<Option<Stamp>>,
    checked_at: AtomicU64,
    cache: Mutex<Cache>,
    /// Keys the cache; random per route and process.
    salt: [u8; 16],
    /// Failed attempts per client.
    failures: Arc<RateLimiter>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("path", &self.path)
            .field("users", &self.users.load().len())
            .finish()
    }
}

impl BasicAuth {
    /// A route's basic auth from its config; its htpasswd file must exist (the error names
    /// the `htpasswd` key) and every line be good (the error names the file's line).
    /// `failures`: the limiter of the same settings before a reload, kept.
    pub fn build(
        loaded: &Loaded,
        cfg: &crate::config::BasicAuth,
        failures: Option<Arc<RateLimiter>>,
    ) -> Result<BasicAuth, ConfigError> {
        let path = loaded.dir.join(&cfg.htpasswd.value);
        let (text, stamp) = read(&path).map_err(|e| {
            loaded.locate(ConfigError::at(
                &loaded.file,
                &cfg.htpasswd.referenced,
                format!("routes: basic_auth.htpasswd: {}: {e}", path.display()),
            ))
        })?;
        let (users, bad) = Users::parse(&text);
        if let Some(b) = bad.first() {
            return Err(ConfigError::new(
                &path.display().to_string(),
                Some((b.line, b.column)),
                format!("htpasswd: {}", b.message),
            ));
        }
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{}\"", cfg.realm.value))
            .map_err(|_| {
                loaded.locate(ConfigError::at(
                    &loaded.file,
                    &cfg.realm.referenced,
                    "routes: basic_auth.realm: not a header value",
                ))
            })?;
        let failures = failures.unwrap_or_else(|| {
            let f = cfg.failures;
            let burst = u32::try_from(f.count).unwrap_or(u32::MAX);
            let max_clients = loaded.config.limits.rate.max_clients();
            Arc::new(RateLimiter::per_ip(f, burst, max_clients))
        });
        let mut salt = [0u8; 16];
        salt.iter_mut().for_each(|b| *b = fastrand::u8(..));
        Ok(BasicAuth {
            challenge,
            path,
            users: ArcSwap::from_pointee(users),
            stamp: Mutex::new(Some(stamp)),
            checked_at: AtomicU64::new(now_ns()),
            cache: Mutex::default(),
            salt,
            failures,
        })
    }

    /// `WWW-Authenticate`'s value.
    pub fn challenge(&self) -> &HeaderValue {
        &self.challenge
    }

    /// The failure limiter (kept across a reload that leaves its settings).
    pub fn failures(&self) -> &Arc<RateLimiter> {
        &self.failures
    }

    /// Decides on a request from `client` with `authorization` (its `Authorization` header).
    pub async fn check(
        &self,
        client: Option<IpAddr>,
        authorization: Option<&HeaderValue>,
    ) -> Verdict {
        self.recheck(now_ns());
        if let Err(wait) = self.failures.peek(client) {
            return Verdict::Limited(wait);
        }
        let Some(value) = authorization else {
            return Verdict::Missing;
        };
        let Some((user, password)) = credentials(value) else {
            return self.failed(client, Failure::Malformed);
        };
        let users = self.users.load_full();
        let key = self.key(&user, &password);
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.generation == users.generation && cache.keys.contains(&key) {
                return Verdict::Pass;
            }
        }
        let Some(hash) = users.get(&user) else {
            return self.failed(client, Failure::UnknownUser);
        };
        let ok = if hash.costly() {
            let hash = hash.clone();
            tokio::task::spawn_blocking(move || hash.verify(&password))
                .await
                .unwrap_or(false)
        } else {
            hash.verify(&password)
        };
        if !ok {
            return self.failed(client, Failure::WrongPassword);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // A file read again meanwhile: what was verified against the old one is not kept.
        if cache.generation == users.generation {
            if cache.keys.len() >= CACHE_MAX {
                if let Some(k) = cache.keys.iter().next().copied() {
                    cache.keys.remove(&k);
                }
            }
            cache.keys.insert(key);
        }
        Verdict::Pass
    }

    fn failed(&self, client: Option<IpAddr>, why: Failure) -> Verdict {
        let _ = self.failures.check(client);
        Verdict::Failed(why)
    }

    fn key(&self, user: &str, password: &[u8]) -> [u8; 32] {
        sha2::Sha256::new()
            .chain_update(self.salt)
            .chain_update(user.as_bytes())
            .chain_update(b":")
            .chain_update(password)
            .finalize()
            .into()
    }

    /// Looks at the file again if a second has passed since the last look (one request
    /// does it, the others go on with the users they have); reads it when it changed.
    fn recheck(&self, now: u64) {
        let last = self.checked_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < RECHECK_NS
            || self
                .checked_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Ok(mut stamp) = self.stamp.try_lock() else {
            return;
        };
        let now_stamp = std::fs::metadata(&self.path).ok().map(|m| Stamp::of(&m));
        if now_stamp == *stamp {
            return;
        }
        let users = match read(&self.path) {
            Ok((text, read_stamp)) => {
                let (users, bad) = Users::parse(&text);
                for b in &bad {
                    tracing::warn!(
                        file = %self.path.display(),
                        line = b.line,
                        column = b.column,
                        "htpasswd: {}; line skipped",
                        b.message
                    );
                }
                *stamp = Some(read_stamp);
                users
            }
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "htpasswd: cannot read it; no user can log in until it is back");
                *stamp = None;
                Users::default()
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.generation += 1;
        cache.keys.clear();
        let users = users.with_generation(cache.generation);
        tracing::info!(file = %self.path.display(), users = users.len(), "htpasswd read again");
        self.users.store(Arc::new(users));
    }

    /// Makes the next request look at the file at once (tests, and a clock-free check).
    pub fn recheck_now(&self) {
        self.checked_at.store(0, Ordering::Relaxed);
        self.recheck(now_ns().max(RECHECK_NS));
    }
}

fn read(path: &Path) -> std::io::Result<(String, Stamp)> {
    // The stamp first: a change while reading shows as a newer stamp next time.
    let stamp = Stamp::of(&std::fs::metadata(path)?);
    Ok((std::fs::read_to_string(path)?, stamp))
}

/// `Basic base64(user:password)` → (user, password); None for anything else.
pub fn credentials(value: &HeaderValue) -> Option<(String, Vec<u8>)> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let text = value.to_str().ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = ENGINE.decode(token.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = std::str::from_utf8(&decoded[..colon]).ok()?.to_string();
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
// pwhash calls the older formats deprecated for new passwords; here they make test vectors.
#[allow(deprecated)]
mod tests {
    use super::*;
    use crate::limits::htpasswd::apr1;

    #[test]
    fn authorization_headers() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            credentials(&v(&format!("Basic {}", enc("al:ice:pw")))),
            Some(("al".to_string(), b"ice:pw".to_vec()))
        );
        assert_eq!(
            credentials(&v(&format!("basic  {}", enc("u:")))),
            Some(("u".to_string(), Vec::new()))
        );
        // Unpadded base64 is taken (some clients write it).
        assert!(credentials(&v("Basic dTpw")).is_some());
        for bad in [
            "Basic".to_string(),
            "Basic !!!".to_string(),
            format!("Basic {}", enc("nocolon")),
            format!("Bearer {}", enc("u:p")),
            enc("u:p"),
        ] {
            assert_eq!(credentials(&v(&bad)), None, "{bad:?}");
        }
    }

    fn auth(dir: &Path, failures: &str) -> BasicAuth {
        let yaml = format!(
            "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\nroutes:\n  - {{ path: /, upstream: app, basic_auth: {{ htpasswd: users, realm: \"r\", failures: \"{failures}\" }} }}\n"
        );
        let loaded = crate::config::load_str(&yaml, "t.yaml", dir.to_path_buf()).unwrap();
        let cfg = loaded.config.routes[0].basic_auth.clone().unwrap();
        BasicAuth::build(&loaded, &cfg, None).unwrap()
    }

    fn basic(user: &str, pw: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        HeaderValue::from_str(&format!("Basic {token}")).unwrap()
    }

    #[tokio::test]
    async fn verified_credentials_are_cached_and_failures_limited() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users");
        std::fs::write(&file, format!("ann:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
        let a = auth(dir.path(), "3/h");
        assert_eq!(a.challenge(), "Basic realm=\"r\"");
        let one = Some("192.0.2.1".parse().unwrap());
        let two = Some("192.0.2.2".parse().unwrap());
        assert_eq!(a.check(one, None).await, Verdict::Missing);
        assert_eq!(a.check(one, Some(&basic("ann", "pw"))).await, Verdict::Pass);
        assert_eq!(a.cache.lock().unwrap().keys.len(), 1, "kept as verified");
        assert_eq!(a.check(one, Some(&basic("ann", "pw"))).await, Verdict::Pass);
        assert_eq!(a.cache.lock().unwrap().keys.len(), 1);
        for (h, why) in [
            (basic("ann", "wrong"), Failure::WrongPassword),
            (basic("bob", "pw"), Failure::UnknownUser),
            (HeaderValue::from_static("Basic !"), Failure::Malformed),
        ] {
            assert_eq!(a.check(one, Some(&h)).await, Verdict::Failed(why));
        }
        // Three failures: the fourth request is limited, good credentials or not.
        assert!(matches!(
            a.check(one, Some(&basic("ann", "pw"))).await,
            Verdict::Limited(_)
        ));
        assert!(matches!(a.check(one, None).await, Verdict::Limited(_)));
        // Another client has its own count.
        assert_eq!(a.check(two, Some(&basic("ann", "pw"))).await, Verdict::Pass);
    }

    #[tokio::test]
    async fn a_changed_file_is_read_again_and_empties_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users");
        std::fs::write(&file, format!("ann:{}\n", apr1(b"old", b"salt"))).unwrap();
        let a = auth(dir.path(), "100/s");
        let client = Some("192.0.2.1".parse().unwrap());
        assert_eq!(
            a.check(client, Some(&basic("ann", "old"))).await,
            Verdict::Pass
        );
        // A new password, and a bad line that is skipped (with a warning).
        let text = format!("ann:{}\nbad line\n", apr1(b"new", b"salt"));
        std::fs::write(&file, text).unwrap();
        a.recheck_now();
        assert_eq!(
            a.check(client, Some(&basic("ann", "old"))).await,
            Verdict::Failed(Failure::WrongPassword)
        );
        assert_eq!(
            a.check(client, Some(&basic("ann", "new"))).await,
            Verdict::Pass
        );
        // Gone: nobody gets in until it is back.
        std::fs::remove_file(&file).unwrap();
        a.recheck_now();
        assert_eq!(
            a.check(client, Some(&basic("ann", "new"))).await,
            Verdict::Failed(Failure::UnknownUser)
        );
    }

    #[test]
    fn a_bad_line_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("users"),
            "ann:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\nbob:secret\n",
        )
        .unwrap();
        let yaml = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\nroutes:\n  - { path: /, upstream: app, basic_auth: { htpasswd: users } }\n";
        let loaded = crate::config::load_str(yaml, "t.yaml", dir.path().to_path_buf()).unwrap();
        let cfg = loaded.config.routes[0].basic_auth.clone().unwrap();
        let err = BasicAuth::build(&loaded, &cfg, None).unwrap_err();
        let shown = err.to_string();
        assert!(shown.ends_with("users:2:5: htpasswd: not a hash htpasswd writes (bcrypt $2y$, $apr1$, {SHA}, crypt); plain-text passwords are not accepted"), "{shown}");
    }
}

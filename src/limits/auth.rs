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

use std::collections::{HashMap, HashSet};
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

/// One password hash of an htpasswd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hash {
    Bcrypt(String),
    /// `$apr1$SALT$HASH`: the salt and the whole text.
    Apr1 {
        salt: String,
        full: String,
    },
    /// `{SHA}`: the SHA-1 digest.
    Sha1([u8; 20]),
    /// crypt(3): DES, `$1$`, `$5$`, `$6$`.
    Crypt(String),
}

impl Hash {
    /// The hash part of an htpasswd line, or what is wrong with it.
    pub fn parse(text: &str) -> Result<Hash, String> {
        const B64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let crypt64 = |s: &str| s.bytes().all(|b| B64.contains(&b));
        if let Some(rest) = text.strip_prefix("$2") {
            let ok = rest.len() == 58
                && matches!(rest.as_bytes()[0], b'a' | b'b' | b'y' | b'x')
                && rest.as_bytes()[1] == b'$'
                && rest[2..4].bytes().all(|b| b.is_ascii_digit())
                && rest.as_bytes()[4] == b'$'
                && crypt64(&rest[5..]);
            return match ok {
                true => Ok(Hash::Bcrypt(text.to_string())),
                false => Err("not a bcrypt hash ($2y$NN$ and 53 characters)".into()),
            };
        }
        if let Some(rest) = text.strip_prefix("$apr1$") {
            return match rest.split_once('$') {
                Some((salt, hash))
                    if !salt.is_empty() && salt.len() <= 8 && hash.len() == 22 && crypt64(hash) =>
                {
                    Ok(Hash::Apr1 {
                        salt: salt.to_string(),
                        full: text.to_string(),
                    })
                }
                _ => Err("not an apr1 hash ($apr1$SALT$ and 22 characters)".into()),
            };
        }
        if let Some(rest) = text.strip_prefix("{SHA}") {
            let digest = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|d| <[u8; 20]>::try_from(d).ok());
            return digest
                .map(Hash::Sha1)
                .ok_or_else(|| "not a {SHA} hash (base64 of 20 bytes)".into());
        }
        if text.starts_with("{PLAIN}") {
            return Err("plain-text passwords are not accepted; hash it (htpasswd -B)".into());
        }
        for (magic, what) in [("$1$", "MD5"), ("$5$", "SHA-256"), ("$6$", "SHA-512")] {
            if let Some(rest) = text.strip_prefix(magic) {
                let hash = rest.rsplit('$').next().unwrap_or("");
                return match rest.contains('$') && !hash.is_empty() && crypt64(hash) {
                    true => Ok(Hash::Crypt(text.to_string())),
                    false => Err(format!("not a crypt {what} hash ({magic}SALT$HASH)")),
                };
            }
        }
        if text.len() == 13 && crypt64(text) {
            return Ok(Hash::Crypt(text.to_string()));
        }
        Err("not a hash htpasswd writes (bcrypt $2y$, $apr1$, {SHA}, crypt); plain-text passwords are not accepted".into())
    }

    /// Slow on purpose: to be run on the blocking pool.
    fn costly(&self) -> bool {
        matches!(self, Hash::Bcrypt(_) | Hash::Crypt(_))
    }

    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Hash::Apr1 { salt, full } => {
                same(apr1(password, salt.as_bytes()).as_bytes(), full.as_bytes())
            }
            Hash::Sha1(digest) => {
                use sha1::Digest as _;
                same(&sha1::Sha1::digest(password), digest)
            }
            Hash::Crypt(h) => pwhash::unix::verify(password, h),
        }
    }
}

/// Equal, in a time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's MD5 (`$apr1$`): FreeBSD's md5-crypt with the magic `$apr1$` in place of `$1$`.
pub fn apr1(password: &[u8], salt: &[u8]) -> String {
    md5_crypt(b"$apr1$", password, salt)
}

fn md5_crypt(magic: &[u8], pw: &[u8], salt: &[u8]) -> String {
    use md5::{Digest as _, Md5};
    let salt = &salt[..salt.len().min(8)];
    let alt = Md5::new()
        .chain_update(pw)
        .chain_update(salt)
        .chain_update(pw)
        .finalize();
    let mut ctx = Md5::new()
        .chain_update(pw)
        .chain_update(magic)
        .chain_update(salt);
    let mut left = pw.len();
    while left > 0 {
        ctx.update(&alt[..left.min(16)]);
        left = left.saturating_sub(16);
    }
    let mut i = pw.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pw[..1]);
        }
        i >>= 1;
    }
    let mut f = ctx.finalize();
    for i in 0..1000 {
        let mut c = Md5::new();
        if i & 1 == 1 {
            c.update(pw);
        } else {
            c.update(f);
        }
        if i % 3 != 0 {
            c.update(salt);
        }
        if i % 7 != 0 {
            c.update(pw);
        }
        if i & 1 == 1 {
            c.update(f);
        } else {
            c.update(pw);
        }
        f = c.finalize();
    }
    const B64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(magic.len() + salt.len() + 23);
    out.extend_from_slice(magic);
    out.extend_from_slice(salt);
    out.push(b'$');
    let mut put = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(B64[(v & 0x3f) as usize]);
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put(
            (u32::from(f[a]) << 16) | (u32::from(f[b]) << 8) | u32::from(f[c]),
            4,
        );
    }
    put(u32::from(f[11]), 2);
    String::from_utf8_lossy(&out).into_owned()
}

/// A line of an htpasswd file that is not `user:hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// The users of an htpasswd file.
#[derive(Debug, Default)]
pub struct Users {
    map: HashMap<String, Hash>,
    /// Which reading of the file this is: the cache keeps only what this one verified.
    generation: u64,
}

impl Users {
    /// The users of `text`, and its bad lines (skipped).
    pub fn parse(text: &str) -> (Users, Vec<BadLine>) {
        let mut map = HashMap::new();
        let mut bad = Vec::new();
        for (line, raw) in (1u64..).zip(text.lines()) {
            let l = raw.trim_end();
            if l.trim_start().is_empty() || l.trim_start().starts_with('#') {
                continue;
            }
            let Some((user, hash)) = l.split_once(':') else {
                bad.push(BadLine {
                    line,
                    column: 1,
                    message: "expected user:hash".into(),
                });
                continue;
            };
            if user.is_empty() {
                bad.push(BadLine {
                    line,
                    column: 1,
                    message: "a user name is needed before the colon".into(),
                });
                continue;
            }
            match Hash::parse(hash) {
                Ok(h) => {
                    map.entry(user.to_string()).or_insert(h);
                }
                Err(message) => bad.push(BadLine {
                    line,
                    column: user.chars().count() as u64 + 2,
                    message,
                }),
            }
        }
        (Users { map, generation: 0 }, bad)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
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
        let Some(hash) = users.map.get(&user) else {
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
        let users = Users {
            generation: cache.generation,
            ..users
        };
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

    #[test]
    fn apr1_matches_apache() {
        // Apache's htpasswd -m, and the vectors of other implementations.
        assert_eq!(
            apr1(b"password", b"RandSalt"),
            "$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/"
        );
        let h = Hash::parse("$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00").unwrap();
        assert!(h.verify(b"password"));
        assert!(!h.verify(b"Password"));
        // The same algorithm under $1$ is glibc's MD5 crypt: pwhash agrees.
        for (pw, salt) in [
            ("", "ab"),
            ("x", "saltsalt"),
            ("a longer password than 16", "s"),
        ] {
            let ours = md5_crypt(b"$1$", pw.as_bytes(), salt.as_bytes());
            let theirs = pwhash::md5_crypt::hash_with(format!("$1${salt}").as_str(), pw).unwrap();
            assert_eq!(ours, theirs, "{pw:?}");
        }
    }

    #[test]
    fn every_format_htpasswd_writes_verifies() {
        use base64::engine::general_purpose::STANDARD;
        use sha1::Digest as _;
        let pw = "s3cret pass";
        let sha = format!("{{SHA}}{}", STANDARD.encode(sha1::Sha1::digest(pw)));
        let hashes = [
            bcrypt::hash(pw, 4).unwrap(),
            bcrypt::hash_with_salt(pw, 4, [7; 16])
                .unwrap()
                .format_for_version(bcrypt::Version::TwoY),
            apr1(pw.as_bytes(), b"abcdefgh"),
            sha,
            pwhash::unix_crypt::hash_with("ab", pw).unwrap(),
            pwhash::md5_crypt::hash_with("$1$abcdefgh", pw).unwrap(),
            pwhash::sha256_crypt::hash_with("$5$rounds=1000$abcdefgh", pw).unwrap(),
            pwhash::sha512_crypt::hash_with("$6$rounds=1000$abcdefgh", pw).unwrap(),
        ];
        for h in &hashes {
            let parsed = Hash::parse(h).unwrap_or_else(|e| panic!("{h}: {e}"));
            assert!(parsed.verify(pw.as_bytes()), "{h}");
            // (DES crypt reads 8 characters: the difference is in them.)
            assert!(!parsed.verify(b"S3cret pass"), "{h}");
            assert!(!parsed.verify(b""), "{h}");
        }
    }

    #[test]
    fn bad_hashes_are_named() {
        for bad in [
            "secret",
            "{PLAIN}secret",
            "$2y$05$short",
            "$apr1$toolongsalt$eIMz/iKDkbtys/uU7LEK00",
            "$apr1$salt$short",
            "{SHA}notbase64!",
            "{SHA}YWJj",
            "$6$nohash",
            "",
        ] {
            assert!(Hash::parse(bad).is_err(), "{bad:?}");
        }
        let (users, bad) = Users::parse(
            "# comment\n\nalice:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\r\nbob\n:nobody\ncarol:plain\nalice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
        );
        assert_eq!(users.len(), 1);
        assert!(
            users.map["alice"].verify(b"password"),
            "the first line wins"
        );
        let at: Vec<(u64, u64)> = bad.iter().map(|b| (b.line, b.column)).collect();
        assert_eq!(at, [(4, 1), (5, 1), (6, 7)]);
        assert!(bad[2].message.contains("plain-text"), "{}", bad[2].message);
    }

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

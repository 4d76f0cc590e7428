//! The htpasswd file's format: `user:hash` lines in the formats Apache's `htpasswd` writes
//! (bcrypt, Apache's MD5 `$apr1$`, `{SHA}`, crypt(3)), parsed and verified. `auth` uses it.
//!
//! `$apr1$` is written here (on RustCrypto's md-5): no maintained crate has it; bcrypt and
//! crypt(3) come from the `bcrypt` and `pwhash` crates.

use std::collections::HashMap;

use base64::Engine as _;

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
    pub fn costly(&self) -> bool {
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
    pub(super) generation: u64,
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

    pub fn get(&self, user: &str) -> Option<&Hash> {
        self.map.get(user)
    }

    /// These users, as the `generation`th reading of their file.
    pub(super) fn with_generation(self, generation: u64) -> Users {
        Users { generation, ..self }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
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
}

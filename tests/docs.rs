//! README.md and docs/*.md stay true. Every YAML snippet is a config `proxyd check` accepts:
//! a snippet without a listener or an upstream gets one (a loopback listener, an upstream
//! `app`), the certificates and CA files it names are made for it (real PEM, from rcgen), so
//! are its htpasswd files (one user) and
//! the error pages it names (`404: errors/404.html`, `page: ...`), and
//! a path outside its directory that names a file of the machine it is deployed on
//! (`/usr/local/bin/proxyd`) is pointed at this build's binary. Every `proxyd ...` command
//! they show is one the binary knows, and every config file they name passes `proxyd check`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{check_path, proxyd_bin};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The fenced blocks of `lang` in `page`: (line of the fence, text).
fn blocks(page: &Path, lang: &str) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(page).unwrap();
    let mut out = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut open {
            None if line.trim_start() == format!("```{lang}") => {
                open = Some((i + 1, String::new()))
            }
            None => {}
            Some(_) if line.trim_start().starts_with("```") => out.extend(open.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    out
}

fn has_top_level(yaml: &str, key: &str) -> bool {
    yaml.lines().any(|l| l.starts_with(&format!("{key}:")))
}

/// The values of `key: VALUE` (block or flow style) in `yaml`.
fn values_of(yaml: &str, key: &str) -> Vec<String> {
    let re = regex::Regex::new(&format!(r"(?:^|[\s{{,]){key}:\s*([^\s,}}#]+)")).unwrap();
    re.captures_iter(yaml)
        .map(|c| c[1].trim_matches('"').to_string())
        .collect()
}

/// Writes real PEM files in `dir` for every certificate, key and CA the snippet names.
fn make_files(dir: &Path, yaml: &str) {
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, pem).unwrap();
    };
    let certs = values_of(yaml, "cert");
    let keys = values_of(yaml, "key");
    for (cert, key) in certs.iter().zip(&keys) {
        let pair = rcgen::generate_simple_self_signed(vec!["example.com".into()]).unwrap();
        write(cert, pair.cert.pem());
        write(key, pair.signing_key.serialize_pem());
    }
    // A static route's root must be a directory.
    for root in values_of(yaml, "root") {
        std::fs::create_dir_all(dir.join(root)).unwrap();
    }
    // A basic_auth's htpasswd file: one user (ann, password "pw", Apache's MD5).
    for file in values_of(yaml, "htpasswd") {
        write(&file, "ann:$apr1$salt$dIQSC7CZVMfwYUarWFsjy0\n".into());
    }
    // Error pages (`404: errors/404.html`) and the maintenance page: small HTML files.
    let status_keys = regex::Regex::new(r"(?:^|[\s{,])\d{3}:\s*([^\s,}#]+)").unwrap();
    let pages = status_keys
        .captures_iter(yaml)
        .map(|c| c[1].trim_matches('"').to_string())
        .chain(values_of(yaml, "page"));
    for page in pages.filter(|p| !p.starts_with('/')) {
        write(&page, "<h1>page</h1>\n".into());
    }
    for ca in values_of(yaml, "ca") {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        write(&ca, params.self_signed(&key).unwrap().pem());
    }
}

/// The snippet completed into a whole config.
fn completed(yaml: &str) -> String {
    let mut out = yaml.replace("/usr/local/bin/proxyd", proxyd_bin());
    if !has_top_level(&out, "listen") {
        out = format!("listen:\n  - addr: \"127.0.0.1:0\"\n{out}");
    }
    if !has_top_level(&out, "upstreams") {
        out.push_str("upstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\n");
    }
    out
}

#[test]
fn every_yaml_snippet_is_a_config_proxyd_check_accepts() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for page in pages() {
        for (line, yaml) in blocks(&page, "yaml") {
            let dir = tempfile::tempdir().unwrap();
            make_files(dir.path(), &yaml);
            let config = dir.path().join("proxy.yaml");
            let whole = completed(&yaml);
            std::fs::write(&config, &whole).unwrap();
            let (ok, out) = check_path(&config);
            if !ok {
                failures.push(format!("{}:{line}: {out}\n{whole}", page.display()));
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} YAML snippets found");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_proxyd_command_shown_is_one_the_binary_knows() {
    let mut seen = 0;
    for page in pages() {
        for (line, sh) in blocks(&page, "sh") {
            for cmd in sh.lines().map(str::trim) {
                let Some(args) = cmd.strip_prefix("proxyd ") else {
                    continue;
                };
                let words: Vec<&str> = args
                    .split('#')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                let place = format!("{}:{line}: {cmd}", page.display());
                // The subcommand, if any: the first word that is not a flag or a flag's value.
                let mut sub = None;
                let mut skip = false;
                for w in &words {
                    if skip {
                        skip = false;
                    } else if *w == "-c" || *w == "--config" {
                        skip = true;
                    } else if *w == "--" {
                        break;
                    } else if !w.starts_with('-') {
                        sub = Some(*w);
                        break;
                    }
                }
                let mut help = Command::new(proxyd_bin());
                help.args(sub).arg("--help");
                let out = help.output().unwrap();
                assert!(
                    out.status.success(),
                    "{place}: `proxyd {} --help` failed: {}",
                    sub.unwrap_or(""),
                    String::from_utf8_lossy(&out.stderr)
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 4, "only {seen} proxyd commands found");
}

#[test]
fn every_config_file_the_pages_run_passes_check() {
    let re = regex::Regex::new(r"-c (config/[\w.-]+\.yaml)").unwrap();
    let mut files = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        files.extend(re.captures_iter(&text).map(|c| c[1].to_string()));
    }
    assert!(
        files.iter().any(|f| f == "config/proxy.yaml"),
        "the demo's config"
    );
    for f in files {
        let (ok, out) = check_path(&repo().join(&f));
        assert!(ok, "{f}: {out}");
    }
}

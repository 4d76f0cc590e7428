//! The fuzz targets' smoke run: every seed input in `fuzz/corpus/<target>/` through the same
//! function its cargo-fuzz target runs (`fuzz/src/lib.rs`), under a plain `cargo test` on
//! stable Rust. The fuzzing itself (libFuzzer, for minutes per target) is `scripts/fuzz.sh`.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;

#[test]
fn every_target_takes_its_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, run) in harness::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no seed inputs", dir.display());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", file.display());
        }
    }
}

/// The fuzz targets are listed in fuzz/Cargo.toml and have their one-line files.
#[test]
fn every_target_is_a_cargo_fuzz_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    for (name, _) in harness::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} missing from fuzz/Cargo.toml"
        );
        let body = std::fs::read_to_string(fuzz.join(format!("fuzz_targets/{name}.rs"))).unwrap();
        assert!(
            body.contains(&format!("proxyd_fuzz::{name}(data)")),
            "fuzz_targets/{name}.rs"
        );
    }
}

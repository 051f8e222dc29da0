//! Replays the fuzz corpus kept in `fuzz/corpus/TARGET/` through the checks the fuzz targets
//! run (`tests::fuzz_checks`), on stable: an input that once made a target fail, or a change
//! that breaks a property on an input the fuzzers found, fails here, in CI, without nightly.

use anyhow::{ensure, Context, Result};
use std::{fs, panic, path::Path};
use tests::{fuzz_checks::TARGETS, workspace_root};

#[test]
fn every_corpus_input_passes_its_check() -> Result<()> {
    let fuzz = workspace_root().join("fuzz");
    let mut failed = Vec::new();
    for (target, check) in TARGETS {
        let inputs = corpus(&fuzz.join("corpus").join(target))?;
        ensure!(!inputs.is_empty(), "fuzz/corpus/{target} holds no input");
        for (file, bytes) in inputs {
            if panic::catch_unwind(|| check(&bytes)).is_err() {
                failed.push(format!("fuzz/corpus/{target}/{file}"));
            }
        }
    }
    ensure!(
        failed.is_empty(),
        "these inputs fail their check: {failed:?}"
    );
    Ok(())
}

#[test]
fn every_check_has_a_fuzz_target() -> Result<()> {
    let fuzz = workspace_root().join("fuzz");
    let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).context("fuzz/Cargo.toml")?;
    for (target, _) in TARGETS {
        let path = fuzz.join("fuzz_targets").join(format!("{target}.rs"));
        let source = fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        ensure!(
            source.contains(&format!("fuzz_checks::{target}(")),
            "fuzz/fuzz_targets/{target}.rs does not call fuzz_checks::{target}"
        );
        ensure!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
    }
    Ok(())
}

/// The files of one corpus folder and their bytes.
fn corpus(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut inputs = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into();
            inputs.push((name, fs::read(&path)?));
        }
    }
    Ok(inputs)
}

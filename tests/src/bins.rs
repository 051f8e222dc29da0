//! Finding the binaries under test: one `cargo build -p directory -p peer` per test process.

use crate::util::tail;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Paths of the two binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    /// The `directory` executable.
    pub directory: PathBuf,
    /// The `peer` executable.
    pub peer: PathBuf,
}

/// The workspace root: the parent of this crate.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// Builds `directory` and `peer` once per test process and returns their paths.
pub fn bins() -> Result<&'static Bins> {
    static BINS: OnceLock<std::result::Result<Bins, String>> = OnceLock::new();
    BINS.get_or_init(|| build_bins().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("building the binaries failed: {e}"))
}

fn build_bins() -> Result<Bins> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            "directory",
            "-p",
            "peer",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run {cargo:?} build"))?;
    if !out.status.success() {
        bail!(
            "`cargo build -p directory -p peer` failed ({}):\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 60)
        );
    }
    // Cargo names the executables it produced; fall back to the usual target layout.
    let mut found: HashMap<String, PathBuf> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    let mut pick = |name: &str| -> Result<PathBuf> {
        let path = found
            .remove(name)
            .unwrap_or_else(|| target.join("debug").join(name));
        ensure!(
            path.is_file(),
            "binary {name} not found at {}",
            path.display()
        );
        Ok(path)
    };
    Ok(Bins {
        directory: pick("directory")?,
        peer: pick("peer")?,
    })
}

//! The stderr files of one test's processes: panic scan and tails for diagnostics.

use crate::util::{read_lossy, tail};
use crate::TAIL;
use anyhow::{ensure, Context, Result};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The stderr files of every process of one test.
#[derive(Debug)]
pub struct Logs {
    pub(crate) dir: PathBuf,
    files: Mutex<Vec<(String, PathBuf)>>,
    seq: Mutex<HashMap<String, u32>>,
}

impl Logs {
    pub(crate) fn new(dir: PathBuf) -> Result<Arc<Self>> {
        fs::create_dir_all(&dir)?;
        Ok(Arc::new(Self {
            dir,
            files: Mutex::new(Vec::new()),
            seq: Mutex::new(HashMap::new()),
        }))
    }

    /// A fresh stderr file for a process labelled `label`.
    pub(crate) fn create(&self, label: &str) -> Result<(String, PathBuf, File)> {
        let n = {
            let mut seq = self.seq.lock().expect("logs lock");
            let n = seq.entry(label.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        let label = format!("{label}#{n}");
        let safe: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = self.dir.join(format!("{safe}.stderr"));
        let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
        self.files
            .lock()
            .expect("logs lock")
            .push((label.clone(), path.clone()));
        Ok((label, path, file))
    }

    /// Fails if any log holds "panicked", quoting the lines around it.
    pub fn assert_no_panics(&self) -> Result<()> {
        let mut report = String::new();
        for (label, path) in self.files.lock().expect("logs lock").iter() {
            let text = read_lossy(path);
            if let Some(pos) = text.find("panicked") {
                let start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
                let excerpt: String = text[start..]
                    .lines()
                    .take(15)
                    .collect::<Vec<_>>()
                    .join("\n");
                let _ = writeln!(report, "--- {label} ({}):\n{excerpt}", path.display());
            }
        }
        ensure!(report.is_empty(), "a process panicked:\n{report}");
        Ok(())
    }

    /// The tail of every log.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (label, path) in self.files.lock().expect("logs lock").iter() {
            let text = read_lossy(path);
            let _ = writeln!(out, "--- stderr of {label}:");
            out.push_str(&tail(&text, TAIL));
        }
        out
    }
}

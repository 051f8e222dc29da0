//! `peer` processes the figures start: the command line they share, a child that is killed
//! when dropped, and waiting for a `listen` to come online.

use anyhow::{bail, Context, Result};
use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Lines},
    net::SocketAddr,
    path::Path,
    process::{Child, ChildStdout},
};

/// A child process killed (and reaped) when dropped, so that an error path leaves nothing
/// running.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The arguments of a `peer` named `name` with its home at `home`, against the directory at
/// `directory`, on loopback, writing JSON lines; the subcommand follows.
pub fn peer_args(directory: SocketAddr, home: &Path, name: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["--name", name, "--directory", &directory.to_string()]
        .map(OsString::from)
        .into();
    args.push("--home".into());
    args.push(home.into());
    args.extend(["--bind", "127.0.0.1:0", "--json"].map(OsString::from));
    args
}

/// Waits for the first line of a `peer listen` started with `--json` and piped stdout, which
/// says it is online; the lines after it.
pub fn online(child: &mut Child, who: &str) -> Result<Lines<BufReader<ChildStdout>>> {
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{who}'s stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(line)) if line.contains("\"online\"") => Ok(lines),
        other => bail!("{who} did not come online: {other:?}"),
    }
}

//! [`Tmux`]: a `peer` command on a real terminal, a pane of a tmux server of its own (its own
//! socket in the test's root, no user configuration), for the full-screen client. Keys go in
//! with `send-keys`, text is read back with `capture-pane`, exactly what a person would see.
//!
//! The pane runs a small script: the peer (its pid written to a file, its stderr to the test's
//! logs), then one line `[exited STATUS icanon|-icanon]` saying how it ended and whether the
//! terminal is back in canonical (cooked) mode, then a long sleep so the pane stays readable.

use crate::peer::PeerCmd;
use crate::util::{read_lossy, send_signal, tail};
use crate::TAIL;
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A `peer` running in a tmux pane.
pub struct Tmux {
    socket: PathBuf,
    pidfile: PathBuf,
    label: String,
    cmdline: String,
    stderr: PathBuf,
}

/// Quotes `s` for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl PeerCmd {
    /// Runs the command on a `width` x `height` terminal in a tmux server of its own, whose
    /// files go under `dir`.
    pub fn tmux(self, dir: &Path, width: u16, height: u16) -> Result<Tmux> {
        let (cmd, cmdline) = self.command()?;
        let (label, stderr) = self.stderr_log(&format!("{cmdline} (in tmux)"))?;
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = dir.join(format!("tmux-{n}"));
        fs::create_dir_all(&dir)?;
        let pidfile = dir.join("peer.pid");
        let mut env = vec!["env".to_string()];
        for (k, v) in cmd.get_envs() {
            let k = k.to_string_lossy();
            match v {
                Some(v) => env.push(quote(&format!("{k}={}", v.to_string_lossy()))),
                None => env.push(format!("-u {}", quote(&k))),
            }
        }
        let mut argv = vec![quote(&cmd.get_program().to_string_lossy())];
        argv.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
        let inner = dir.join("inner.sh");
        fs::write(
            &inner,
            format!(
                "echo $$ > {}\nexec {} {} 2>>{}\n",
                quote(&pidfile.to_string_lossy()),
                env.join(" "),
                argv.join(" "),
                quote(&stderr.to_string_lossy()),
            ),
        )?;
        let outer = dir.join("pane.sh");
        fs::write(
            &outer,
            format!(
                "sh {}\necho \"[exited $? $(stty -a | grep -o -- '-\\?icanon' | head -1)]\"\n\
                 exec sleep 600\n",
                quote(&inner.to_string_lossy())
            ),
        )?;
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
            pidfile,
            label,
            cmdline,
            stderr,
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &format!("sh {}", quote(&outer.to_string_lossy())),
        ])?;
        Ok(tmux)
    }
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .context("running tmux (is it installed?)")?;
        if !out.status.success() {
            bail!(
                "tmux {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// What the pane shows now, as text.
    pub fn screen(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    /// Presses keys, in tmux's names (`Enter`, `C-c`, `PageUp`, `Tab`...).
    pub fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args).map(drop)
    }

    /// Types `text` literally.
    pub fn type_text(&self, text: &str) -> Result<()> {
        self.run(&["send-keys", "-t", "t", "-l", text]).map(drop)
    }

    /// Types `text` and presses Enter.
    pub fn line(&self, text: &str) -> Result<()> {
        self.type_text(text)?;
        self.keys(&["Enter"])
    }

    /// Pastes `text` the way a terminal does (bracketed paste, if the program asked for it).
    /// The text goes through a file beside the tmux socket: a tmux command line has a limit,
    /// and a paste may be large.
    pub fn paste(&self, text: &str) -> Result<()> {
        let file = self.socket.with_extension("paste");
        std::fs::write(&file, text)?;
        let path = file.to_string_lossy().into_owned();
        self.run(&["load-buffer", "-b", "p", &path])?;
        self.run(&["paste-buffer", "-p", "-d", "-b", "p", "-t", "t"])
            .map(drop)
    }

    /// Resizes the terminal.
    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        self.run(&[
            "resize-window",
            "-t",
            "t",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ])
        .map(drop)
    }

    /// Starts copying everything the program writes to the terminal, escape sequences and
    /// all, to a file beside the tmux socket; read it with [`Tmux::raw_output`].
    pub fn record_output(&self) -> Result<()> {
        let file = self.socket.with_extension("raw");
        let command = format!("cat >> {}", quote(&file.to_string_lossy()));
        self.run(&["pipe-pane", "-o", "-t", "t", &command])
            .map(drop)
    }

    /// What the program wrote since [`Tmux::record_output`].
    pub fn raw_output(&self) -> String {
        read_lossy(&self.socket.with_extension("raw"))
    }

    /// The pane's title, as the program set it (OSC 2).
    pub fn title(&self) -> Result<String> {
        Ok(self
            .run(&["display", "-p", "-t", "t", "#{pane_title}"])?
            .trim_end()
            .to_string())
    }

    /// Whether the pane is on the alternate screen (a full-screen program owns it).
    pub fn alternate_screen(&self) -> Result<bool> {
        Ok(self
            .run(&["display", "-p", "-t", "t", "#{alternate_on}"])?
            .trim()
            == "1")
    }

    /// The peer's process id.
    pub fn pid(&self) -> Result<u32> {
        let text = fs::read_to_string(&self.pidfile).context("the pane's pid file")?;
        Ok(text.trim().parse()?)
    }

    /// Sends a signal to the peer.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        send_signal(self.pid()?, sig)
    }

    /// Polls the screen until `pred` holds; returns that screen. The error shows the last
    /// screen and the peer's stderr.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen()?;
            if pred(&screen) {
                return Ok(screen);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for the screen to show {what}\n  \
                     process {} `{}`\n  screen:\n{}  stderr:\n{}",
                    self.label,
                    self.cmdline,
                    tail(&screen, 60),
                    tail(&read_lossy(&self.stderr), TAIL)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the screen to contain `needle`.
    pub fn wait_text(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for(&format!("{needle:?}"), timeout, |s| s.contains(needle))
    }

    /// Waits for the peer to end with status 0 and the terminal to be as before: off the
    /// alternate screen, back in canonical mode.
    pub fn wait_clean_exit(&self, timeout: Duration) -> Result<()> {
        let screen = self.wait_for("the peer's exit line", timeout, |s| s.contains("[exited "))?;
        if !screen.contains("[exited 0 icanon]") {
            bail!(
                "the peer did not end cleanly (expected `[exited 0 icanon]`):\n{}stderr:\n{}",
                tail(&screen, 60),
                tail(&read_lossy(&self.stderr), TAIL)
            );
        }
        if self.alternate_screen()? {
            bail!("the pane is still on the alternate screen after the peer ended");
        }
        Ok(())
    }

    /// The peer's stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Ends this test's own tmux server, and with it the pane and the peer in it.
        let _ = self.run(&["kill-server"]);
    }
}

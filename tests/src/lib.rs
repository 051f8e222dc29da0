//! Harness for the end-to-end scenarios in `tests/tests/*.rs`: it builds and runs the real
//! `directory` and `peer` binaries, each in its own temporary directory, and talks to them only
//! through their command line, stdin/stdout and signals, exactly as a user would.
//!
//! # Layout
//!
//! - `bins`: builds the binaries once per test process and finds them.
//! - `logs`, `util`, `checks`: stderr files, small helpers, message checks.
//! - [`Net`]: one test's world: a temporary root, one [`Directory`] (or two nodes of a cluster,
//!   [`Topology`]), and one home per peer identity, so that repeated commands of the same name
//!   reuse the same key. [`on_each_topology!`] runs a scenario on one node and on two.
//! - [`Directory`]: a running `directory` process; kill -9, SIGTERM, restart on the same data.
//! - [`PeerCmd`]: a builder for one `peer` invocation; [`PeerCmd::run`] for short commands,
//!   [`PeerCmd::spawn`] for `listen` and `chat`, which give a [`Running`].
//! - [`netns`]: real Linux NATs made of network namespaces, for the NAT traversal scenarios;
//!   [`PeerCmd::netns`] and [`DirOpts::netns`] run a process inside one.
//! - [`Nats`]: a `nats-server` with JetStream, for directories run as a cluster.
//! - [`metrics`]: a directory's Prometheus metrics: where, one scrape, one sample.
//! - [`raw`]: a hand-made QUIC client for hostile input at the protocol level.
//! - [`fuzz_checks`]: what each fuzz target checks, for `fuzz/` and the corpus replay.
//! - [`Running`]: a long-lived process whose stdout lines are read on a thread; `wait_*`
//!   return the first matching line or fail with what was received and the stderr tail.
//! - [`Browser`]: headless chromium driven through chromedriver (WebDriver), for `peer web`;
//!   [`http`], one plain HTTP request.
//! - [`Tmux`]: a `peer` on a real terminal (a tmux pane of its own tmux server), for the
//!   full-screen client: type keys, paste, read the screen, signal it.
//!
//! # Rules the scenarios follow
//!
//! - Never a fixed port: everything binds `127.0.0.1:0` and learns its address from output.
//! - Never a sleep as synchronisation: wait for a line, or poll a command with a deadline
//!   ([`poll_until`]). Every loop is bounded.
//! - The binaries run without the `CHAT_*`/`DIRECTORY_*` variables of the caller's
//!   environment: only the flags a scenario passes count.
//! - Every process's stderr goes to a file under the test's root. When a [`Net`] is dropped it
//!   prints the tail of every log; libtest shows that only for a failed test. Set
//!   `CHAT_TESTS_KEEP=1` to keep the root directory for inspection.

use std::time::Duration;

mod bins;
mod browser;
mod checks;
mod directory;
pub mod fuzz_checks;
mod logs;
pub mod metrics;
mod nats;
mod net;
pub mod netns;
mod peer;
pub mod raw;
mod running;
mod tmux;
mod util;

pub use bins::{bins, workspace_root, Bins};
pub use browser::{browser_available, http, Browser, HttpResponse};
pub use checks::{check_messages, numbered};
pub use directory::{directory_fingerprint, parse_start_line, DirOpts, Directory};
pub use logs::Logs;
pub use nats::Nats;
pub use net::{Net, Topology};
pub use nix::sys::signal::Signal as Sig;
pub use peer::{CmdOutput, PeerCmd};
pub use running::Running;
pub use serde_json::Value as Json;
pub use tmux::Tmux;
pub use util::{body, is_hex32, is_hex64, is_message_from, is_type, now_ms, poll_until, tail};

/// Runs each scenario named, a `fn(Topology) -> anyhow::Result<()>` of the calling file, as two
/// tests: `one_node::NAME` on one directory, and `two_nodes::NAME` with the peers split over two
/// nodes of a cluster on NATS JetStream. A scenario written once holds for both.
#[macro_export]
macro_rules! on_each_topology {
    ($($scenario:ident),+ $(,)?) => {
        mod one_node {
            $(
                #[test]
                fn $scenario() -> anyhow::Result<()> {
                    super::$scenario($crate::Topology::OneNode)
                }
            )+
        }
        mod two_nodes {
            $(
                #[test]
                fn $scenario() -> anyhow::Result<()> {
                    super::$scenario($crate::Topology::TwoNodes)
                }
            )+
        }
    };
}

/// How long a directory may take to print its start line.
pub const DIRECTORY_START: Duration = Duration::from_secs(20);
/// Default bound for one short `peer` command.
pub const SHORT: Duration = Duration::from_secs(30);
/// Default bound for a `listen`/`chat` to print its `online` line.
pub const ONLINE: Duration = Duration::from_secs(20);
/// Default bound for a process to exit after a signal or end of stdin.
pub const EXIT: Duration = Duration::from_secs(15);

/// Lines of each log shown in diagnostics.
pub(crate) const TAIL: usize = 40;

#[cfg(test)]
mod unit {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn start_line_parses() {
        let fp = "ab".repeat(32);
        let (addr, got) = parse_start_line(&format!(
            "directory listening on 127.0.0.1:4242 fingerprint {fp}\n"
        ))
        .expect("valid line");
        assert_eq!(addr, "127.0.0.1:4242".parse::<SocketAddr>().expect("addr"));
        assert_eq!(got, fp);
        assert!(parse_start_line("directory listening on 127.0.0.1:1 fingerprint xyz").is_err());
        assert!(parse_start_line("listening on 127.0.0.1:1").is_err());
    }

    #[test]
    fn tail_keeps_last_lines() {
        let t = tail("a\nb\nc\n", 2);
        assert!(t.contains("1 earlier") && t.contains("    b") && t.contains("    c"));
    }
}

//! The in-repo bulk reference: one QUIC bi-stream between two processes, each on a
//! current-thread tokio runtime as quinn's perf tool runs, on quinn-perf's configuration or on
//! the peers' own (`bench::bulk`). `loadgen` runs it; by hand:
//!
//! ```sh
//! target/release/quicref receive --config perf        # prints: listening ADDR TRUST
//! target/release/quicref send --config perf ADDR TRUST 1073741824   # prints the seconds
//! ```

use anyhow::Result;
use bench::bulk::{self, Config};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "p2pchat bulk reference: one QUIC stream between two processes")]
struct Cli {
    #[command(subcommand)]
    command: Side,
}

#[derive(Subcommand)]
enum Side {
    /// Take one connection with one stream, count its bytes and answer the count.
    Receive {
        #[arg(long, value_enum, default_value = "perf")]
        config: Config,
    },
    /// Send BYTES on one stream to ADDR and print the seconds until the receiver's count.
    Send {
        #[arg(long, value_enum, default_value = "perf")]
        config: Config,
        /// The receiver's address.
        addr: SocketAddr,
        /// What the receiver printed for its certificate or key.
        trust: String,
        /// How many bytes.
        bytes: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // quinn-perf runs on a current-thread runtime; so does this reference.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Side::Receive { config } => bulk::receive(config).await,
            Side::Send {
                config,
                addr,
                trust,
                bytes,
            } => {
                let elapsed = bulk::send(config, addr, &trust, bytes).await?;
                println!("{}", elapsed.as_secs_f64());
                Ok(())
            }
        }
    })
}

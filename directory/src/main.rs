//! The `directory` binary: command line, logging and signals only. The server itself is
//! [`directory::run`].

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use common::{defaults, Identity};
use directory::{
    cluster::{Cluster, Membership},
    store::{jetstream::LogConfig, JetStreamStore, RedbStore, Store},
    Config,
};
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

/// Rendezvous server for peer-to-peer chat: binds names to keys, tracks who is online, and
/// holds messages for peers that cannot be reached directly.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// UDP address to serve QUIC on.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], defaults::DIRECTORY_PORT)))]
    bind: SocketAddr,

    /// Folder for the key, certificate and database [default: the platform data folder].
    #[arg(long, global = true, env = "DIRECTORY_DATA")]
    data: Option<PathBuf>,

    /// Most messages held for one recipient.
    #[arg(long, default_value_t = defaults::MAILBOX_QUOTA_MESSAGES)]
    mailbox_quota_messages: u64,

    /// Most bytes held for one recipient, counted as stored (every field, not only bodies).
    #[arg(long, default_value_t = defaults::MAILBOX_QUOTA_BYTES)]
    mailbox_quota_bytes: u64,

    /// Most messages and file parts one sender may have waiting for one recipient.
    #[arg(long, default_value_t = defaults::MAILBOX_SENDER_QUOTA_MESSAGES)]
    mailbox_quota_sender_messages: u64,

    /// Most bytes one sender may have waiting for one recipient, counted as stored.
    #[arg(long, default_value_t = defaults::MAILBOX_SENDER_QUOTA_BYTES)]
    mailbox_quota_sender_bytes: u64,

    /// Most bytes all mailboxes together hold, counted as stored; past it, deposits are refused.
    #[arg(long, default_value_t = defaults::STORE_MAX_BYTES)]
    store_max_bytes: u64,

    /// Deposits are refused while the disk holding the database has fewer free bytes.
    #[arg(long, default_value_t = defaults::MIN_FREE_DISK)]
    min_free_disk: u64,

    /// Most names one key may hold; names held before are kept.
    #[arg(long, default_value_t = defaults::NAMES_PER_KEY)]
    names_per_key: u32,

    /// Days without a registration after which another key may take a name (its mailbox is
    /// emptied then).
    #[arg(long, default_value_t = defaults::NAME_EXPIRY.as_secs() / 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    name_expiry_days: u64,

    /// New names one host (an IPv4 address, an IPv6 /64) may bind per hour.
    #[arg(long, default_value_t = defaults::NAME_BINDS_PER_IP_PER_HOUR, value_parser = clap::value_parser!(u32).range(1..))]
    name_binds_per_ip_per_hour: u32,

    /// Introductions (hole punching) one key may ask for per minute.
    #[arg(long, default_value_t = defaults::INTRODUCTIONS_PER_KEY_PER_MINUTE, value_parser = clap::value_parser!(u32).range(1..))]
    introductions_per_key_per_minute: u32,

    /// Introductions one host may ask for per minute, whatever its keys.
    #[arg(long, default_value_t = defaults::INTRODUCTIONS_PER_IP_PER_MINUTE, value_parser = clap::value_parser!(u32).range(1..))]
    introductions_per_ip_per_minute: u32,

    /// Introductions one peer may be sent per minute, whoever asks.
    #[arg(long, default_value_t = defaults::INTRODUCTIONS_PER_TARGET_PER_MINUTE, value_parser = clap::value_parser!(u32).range(1..))]
    introductions_per_target_per_minute: u32,

    /// Lookups one key may make per minute (past it: "too many requests").
    #[arg(long, default_value_t = defaults::LOOKUPS_PER_KEY_PER_MINUTE, value_parser = clap::value_parser!(u32).range(1..))]
    lookups_per_key_per_minute: u32,

    /// Most connections served at once; more are refused. Above half of it, a client must
    /// prove its address first (a QUIC Retry, one more round trip).
    #[arg(long, default_value_t = defaults::MAX_CONNECTIONS)]
    max_connections: u32,

    /// Most connections one host (an IPv4 address, an IPv6 /64) holds at once; more are
    /// refused.
    #[arg(long, default_value_t = defaults::MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: u32,

    /// New connections one host may open per second, sustained; faster ones are refused.
    #[arg(long, default_value_t = defaults::NEW_CONNECTIONS_PER_SECOND, value_parser = clap::value_parser!(u32).range(1..))]
    new_connections_per_second: u32,

    /// New connections one host may open at once, before the rate per second applies.
    #[arg(long, default_value_t = defaults::NEW_CONNECTIONS_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    new_connections_burst: u32,

    /// Seconds a connection has to register, handshake included, before it is closed.
    #[arg(long, default_value_t = defaults::REGISTRATION_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    registration_timeout: u64,

    /// Threads serving the network. One is the most efficient: quinn handles every datagram
    /// of an endpoint in one task anyway, and with more threads each heartbeat also wakes an
    /// idle thread (a third of the directory's CPU with 10k peers online). More can help a
    /// directory that answers many requests at once. The store's writer has its own thread.
    #[arg(long, env = "DIRECTORY_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,

    /// The directory's private key (PKCS#8 DER, like `key.der` in a data folder) instead of
    /// the one in --data: give every node of a cluster the same file, and peers pin one
    /// fingerprint for all of them.
    #[arg(long, env = "DIRECTORY_KEY", global = true)]
    key: Option<PathBuf>,

    /// How log lines on stderr look: `text` for people, `json` (one object per line) for log
    /// shippers.
    #[arg(long, env = "DIRECTORY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    /// Run as a node of a cluster whose state is kept in NATS JetStream, at these servers
    /// (comma-separated, `nats://HOST:4222,nats://HOST2:4222`). Without it, the directory keeps
    /// its state in one file in --data and needs no other server.
    #[arg(long, env = "DIRECTORY_STORE", value_name = "nats://HOST:PORT,...")]
    store: Option<String>,

    /// Copies JetStream keeps of the cluster's log when this node creates it: 3 for a NATS
    /// cluster of three servers (one may fail), 1 for a single NATS server.
    #[arg(long, env = "DIRECTORY_STORE_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    store_replicas: u8,

    /// Entries the cluster's log may hold before a node compacts it: it stores a snapshot of
    /// its replica in JetStream and purges the log up to it (0: never). A node that is behind
    /// the log's start, a new one say, starts from the newest snapshot.
    #[arg(long, env = "DIRECTORY_LOG_COMPACT_AFTER", default_value_t = 100_000)]
    log_compact_after: u64,

    /// About how often, in seconds, this node checks whether the log needs compacting (each
    /// check waits a random half to all of it, so that nodes rarely compact together).
    #[arg(long, env = "DIRECTORY_LOG_COMPACT_CHECK", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    log_compact_check: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (TCP), for example 127.0.0.1:9100.
    /// Off unless given; keep it on a private address: it tells how busy the directory is.
    #[arg(long, env = "DIRECTORY_METRICS")]
    metrics: Option<SocketAddr>,
}

/// See `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the fingerprint of this directory's key (what peers pin), making the key if needed.
    Fingerprint,
    /// Check that a directory answers: a QUIC handshake that presents this data folder's key.
    /// Exits 0 when healthy; made for container health checks, which may have no shell.
    Health {
        /// Address of the directory to check.
        #[arg(long, default_value = "127.0.0.1:9000")]
        target: SocketAddr,
    },
}

fn main() -> ExitCode {
    // The key and the database are the operator's alone, whatever the umask inherited.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // Colour only for a person at a terminal: not in files, pipes or `docker logs`.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("directory: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn data_dir(cli: &Cli) -> Result<PathBuf> {
    match &cli.data {
        Some(dir) => Ok(dir.clone()),
        None => directories::ProjectDirs::from("", "", "p2pchat")
            .map(|d| d.data_dir().join("directory"))
            .context("no home folder to keep data in; pass --data"),
    }
}

fn run(cli: Cli) -> Result<()> {
    let data = data_dir(&cli)?;
    let identity = match &cli.key {
        Some(key) => Identity::from_key_file(key, "directory")
            .with_context(|| format!("loading the directory's key from {}", key.display()))?,
        None => Identity::load_or_generate(&data, "directory")
            .with_context(|| format!("loading the directory's key from {}", data.display()))?,
    };
    private(&data);
    match cli.command {
        Some(Command::Fingerprint) => {
            println!("{}", identity.key_id);
            return Ok(());
        }
        Some(Command::Health { target }) => return health(&identity, target),
        None => {}
    }
    let node = node_id(&data)?;
    let servers: Option<Vec<String>> = cli.store.as_ref().map(|list| {
        list.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let (store, changes, failed): (Arc<dyn Store>, _, _) = match &servers {
        None => {
            let store = RedbStore::open(&data.join("directory.redb"))
                .with_context(|| format!("opening the database in {}", data.display()))?;
            (Arc::new(store), None, None)
        }
        Some(servers) => {
            let log = LogConfig {
                replicas: cli.store_replicas.into(),
                compact_after: cli.log_compact_after,
                compact_check: std::time::Duration::from_secs(cli.log_compact_check),
                ..LogConfig::default()
            };
            let replica = data.join("replica.redb");
            let store = JetStreamStore::open(servers, &log, &replica)
                .with_context(|| format!("joining the cluster's store at {}", servers.join(",")))?;
            let (changes, failed) = (store.changes(), store.failed());
            (Arc::new(store), Some(changes), Some(failed))
        }
    };
    let config = Config {
        quota: directory::store::Quota {
            max_messages: cli.mailbox_quota_messages,
            max_bytes: cli.mailbox_quota_bytes,
            sender_messages: cli.mailbox_quota_sender_messages,
            sender_bytes: cli.mailbox_quota_sender_bytes,
            total_bytes: cli.store_max_bytes,
            min_free_disk: cli.min_free_disk,
        },
        max_connections: cli.max_connections,
        naming: directory::store::Naming {
            names_per_key: cli.names_per_key,
            expiry_ms: cli.name_expiry_days.saturating_mul(86_400_000),
        },
        rates: directory::rates::Rates {
            introductions_per_key: cli.introductions_per_key_per_minute,
            introductions_per_ip: cli.introductions_per_ip_per_minute,
            introductions_per_target: cli.introductions_per_target_per_minute,
            name_binds_per_ip: cli.name_binds_per_ip_per_hour,
            lookups_per_key: cli.lookups_per_key_per_minute,
        },
    };
    let runtime = match cli.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n.into());
            builder
        }
    }
    .enable_all()
    .build()
    .context("starting the runtime")?;
    runtime.block_on(async {
        let server_config = common::tls::server_config(&identity, defaults::ALPN_DIRECTORY)?;
        // Reset tokens from the directory's own key: after a restart, the peers of the last run
        // learn at their next packet that their connection is gone, and reconnect.
        let endpoint = common::socket::endpoint_with_reset_secret(
            Some(server_config),
            cli.bind,
            identity.key.secret_pkcs8_der(),
        )
        .with_context(|| format!("binding {}", cli.bind))?;
        let addr = endpoint.local_addr()?;
        let metrics = match cli.metrics {
            Some(at) => {
                let listener = tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("binding the metrics address {at}"))?;
                tracing::info!(at = %listener.local_addr()?, "serving metrics");
                Some(listener)
            }
            None => None,
        };
        let cluster = match (&servers, changes) {
            (Some(servers), Some(changes)) => {
                let cluster = Cluster::connect(servers, &node)
                    .await
                    .context("connecting to the cluster's NATS servers")?;
                Some(Membership { cluster, changes })
            }
            _ => None,
        };
        let signal = shutdown_signal()?;
        // A node whose replica stopped applying the cluster's log stops serving too (and
        // exits non-zero), so that its peers move to a node that can serve them.
        let stopped = std::sync::OnceLock::new();
        let shutdown = async {
            match failed {
                Some(failed) => tokio::select! {
                    () = signal => {}
                    why = failed => {
                        tracing::error!("stopping: this node cannot apply the cluster's log: {why}");
                        let _ = stopped.set(why);
                    }
                },
                None => signal.await,
            }
        };
        tracing::info!(%addr, fingerprint = %identity.key_id, node, "directory listening");
        // One stdout line that scripts and tests can read.
        println!(
            "directory listening on {addr} fingerprint {}",
            identity.key_id
        );
        if let Some(listener) = &metrics {
            println!("metrics on http://{}/metrics", listener.local_addr()?);
        }
        let limits = directory::Limits {
            per_ip: cli.max_connections_per_ip,
            new_per_second: cli.new_connections_per_second,
            new_burst: cli.new_connections_burst,
            registration_timeout: std::time::Duration::from_secs(cli.registration_timeout),
        };
        directory::run(endpoint, store, config, limits, metrics, cluster, shutdown).await?;
        match stopped.get() {
            Some(why) => anyhow::bail!("this node cannot apply the cluster's log: {why}"),
            None => Ok(()),
        }
    })
}

/// This node's own id, kept in its data folder: nodes of a cluster share one key, and their
/// logs say which node speaks.
fn node_id(data: &std::path::Path) -> Result<String> {
    let path = data.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = hex::encode(rand::random::<[u8; 8]>());
            std::fs::create_dir_all(data)?;
            common::identity::write_atomically(&path, id.as_bytes())?;
            Ok(id)
        }
    }
}

/// Dials `target` and checks that it presents `identity`'s key.
fn health(identity: &Identity, target: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // A throwaway client key: the directory accepts any key for a handshake.
        let client = Identity::generate("health-check")?;
        let expect = common::tls::Expect::Key(identity.key_id);
        let config = common::tls::client_config(&client, defaults::ALPN_DIRECTORY, expect)?;
        let local: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            "[::]:0".parse()?
        };
        let endpoint = quinn::Endpoint::client(local)?;
        let connecting = endpoint.connect_with(config, target, "directory")?;
        let conn = tokio::time::timeout(std::time::Duration::from_secs(5), connecting)
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {target} within 5 s"))?
            .with_context(|| format!("the directory at {target} is not healthy"))?;
        conn.close(common::wire::codes::OK.into(), b"health check");
        endpoint.wait_idle().await;
        println!("healthy");
        Ok(())
    })
}

/// Listens for Ctrl-C and SIGTERM (what `docker stop` sends) from now on, and returns a future
/// that resolves on the first. Installed before the start line is printed, so a signal sent
/// the moment the line appears is handled, not fatal.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
    })
}

/// Closes the data folder to everyone but its owner (0700), also when an older version left it
/// open; a folder we cannot change is the operator's call, and only logged.
fn private(data: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let open = std::fs::metadata(data).is_ok_and(|m| m.permissions().mode() & 0o077 != 0);
    if open {
        if let Err(e) = std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(cause = %e, "cannot make {} private", data.display());
        }
    }
}

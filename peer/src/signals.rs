//! The signals that end a running peer cleanly.

use anyhow::Result;

/// Listens for Ctrl-C and SIGTERM from now on, and returns a future that resolves on the first.
/// Called before anything announces that the peer is up, so a signal sent the moment the
/// announcement appears ends the peer cleanly instead of killing it.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    })
}

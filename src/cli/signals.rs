//! SIGINT and SIGTERM, the two ways users and Kubernetes ask a process to stop.

#[cfg(unix)]
pub async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
pub async fn wait_for_stop_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

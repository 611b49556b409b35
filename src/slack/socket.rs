//! Socket Mode: interactions over a WebSocket, for deployments without a public
//! URL (`slack.mode = "socket"`).
//!
//! A supervisor keeps one live connection. Each connection asks
//! `apps.connections.open` (with the app-level token) for a fresh URL, connects,
//! and waits for `hello`. Every envelope is acknowledged with
//! `{"envelope_id": ...}` on the connection it came on *before* any work is done;
//! its payload is then de-duplicated by envelope id (in the store, so replicas
//! share it) and dispatched like an HTTP interaction. On `disconnect` (Slack's
//! `warning` and `refresh_requested`, among others) a new connection is opened
//! and the old one is dropped only once the new one said `hello`, so nothing is
//! missed in between. `link_disabled` means Socket Mode was turned off for the
//! app: we keep trying, slowly, and say so in the log.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

use super::api::{Args, Retry};
use super::interactions::{Interaction, Source};
use super::Slack;

/// How long an envelope id is remembered for de-duplication.
const ENVELOPE_MEMORY: Duration = Duration::from_secs(3600);
/// A connection that has not said `hello` by then is given up.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// We ping this often, and give a connection up after three silent periods.
const PING_EVERY: Duration = Duration::from_secs(20);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const DISABLED_BACKOFF: Duration = Duration::from_secs(300);

/// What a connection tells the supervisor.
#[derive(Debug)]
enum Event {
    Hello(u64),
    Disconnect(u64, String),
    Closed(u64, String),
}

struct Conn {
    id: u64,
    close: Option<oneshot::Sender<()>>,
}

impl Conn {
    fn close(&mut self) {
        if let Some(tx) = self.close.take() {
            let _ = tx.send(());
        }
    }
}

fn tls_connector() -> Option<Connector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(Connector::Rustls(Arc::new(cfg)))
}

impl Slack {
    /// Runs Socket Mode until `stop` turns true.
    pub async fn run_socket(self, mut stop: watch::Receiver<bool>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let mut next_id = 0u64;
        let mut current: Option<Conn> = None;
        let mut pending: Option<Conn> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut reconnect_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
        tracing::info!("slack socket mode starting");
        loop {
            let sleep = async {
                match reconnect_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        for c in [current.as_mut(), pending.as_mut()].into_iter().flatten() {
                            c.close();
                        }
                        tracing::info!("slack socket mode stopped");
                        return;
                    }
                }
                _ = sleep => {
                    reconnect_at = None;
                    if pending.is_none() {
                        next_id += 1;
                        pending = Some(self.spawn_connection(next_id, tx.clone()));
                    }
                }
                Some(ev) = rx.recv() => match ev {
                    Event::Hello(id) => {
                        if pending.as_ref().is_some_and(|p| p.id == id) {
                            // The new connection is live: only now drop the old one.
                            if let Some(mut old) = current.take() {
                                tracing::info!(slack.connection = old.id, "slack socket replaced");
                                old.close();
                            }
                            current = pending.take();
                        }
                        backoff = FIRST_BACKOFF;
                    }
                    Event::Disconnect(id, reason) => {
                        if current.as_ref().is_some_and(|c| c.id == id) && pending.is_none() {
                            if reason == "link_disabled" {
                                tracing::error!(slack.connection = id, reason = %reason, "slack socket mode is disabled for this app; retrying slowly");
                                reconnect_at = Some(tokio::time::Instant::now() + DISABLED_BACKOFF);
                            } else {
                                tracing::info!(slack.connection = id, reason = %reason, "slack asked to reconnect; opening a new connection first");
                                next_id += 1;
                                pending = Some(self.spawn_connection(next_id, tx.clone()));
                            }
                        }
                    }
                    Event::Closed(id, why) => {
                        let was_current = current.as_ref().is_some_and(|c| c.id == id);
                        let was_pending = pending.as_ref().is_some_and(|c| c.id == id);
                        if was_current {
                            current = None;
                        }
                        if was_pending {
                            pending = None;
                        }
                        // Reconnect when nothing is left, or when the replacement failed
                        // (the old connection is on its way out).
                        let lost = (was_current && pending.is_none()) || was_pending;
                        if lost && reconnect_at.is_none() {
                            tracing::warn!(slack.connection = id, reason = %why, retry_in = ?backoff, "slack socket closed; reconnecting");
                            reconnect_at = Some(tokio::time::Instant::now() + backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        } else if was_current || was_pending {
                            tracing::debug!(slack.connection = id, reason = %why, "slack socket closed");
                        }
                    }
                },
            }
        }
    }

    fn spawn_connection(&self, id: u64, events: mpsc::UnboundedSender<Event>) -> Conn {
        let (close_tx, close_rx) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            let why = this.connection(id, &events, close_rx).await;
            let _ = events.send(Event::Closed(id, why));
        });
        Conn { id, close: Some(close_tx) }
    }

    /// One connection, from `apps.connections.open` to its close. Returns why it
    /// ended.
    async fn connection(
        &self,
        id: u64,
        events: &mpsc::UnboundedSender<Event>,
        mut close: oneshot::Receiver<()>,
    ) -> String {
        let inner = &self.inner;
        let Some(app_token) = inner.app_token() else { return "no app token".into() };
        let url = match inner.api.call("apps.connections.open", &app_token, Args::Form(&[]), Retry::BACKGROUND).await {
            Ok(v) => match v.get("url").and_then(Value::as_str) {
                Some(u) => u.to_string(),
                None => return "apps.connections.open answered without a url".into(),
            },
            Err(e) => return e.to_string(),
        };
        let connect = tokio_tungstenite::connect_async_tls_with_config(url.as_str(), None, true, tls_connector());
        let ws = match tokio::time::timeout(HELLO_TIMEOUT, connect).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return format!("websocket connect failed: {e}"),
            Err(_) => return "websocket connect timed out".into(),
        };
        tracing::info!(slack.connection = id, "slack socket connected");
        let (mut sink, mut stream) = ws.split();
        let mut said_hello = false;
        let hello_deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = &mut close => {
                    let _ = sink.send(Message::Close(None)).await;
                    return "closed by us".into();
                }
                _ = tokio::time::sleep_until(hello_deadline), if !said_hello => {
                    return "no hello in time".into();
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > PING_EVERY * 3 {
                        return "no traffic from slack".into();
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        return "ping failed".into();
                    }
                }
                msg = stream.next() => {
                    last_heard = tokio::time::Instant::now();
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t.as_str().to_string(),
                        Some(Ok(Message::Close(f))) => return format!("closed by slack: {f:?}"),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return format!("websocket error: {e}"),
                        None => return "websocket ended".into(),
                    };
                    let v: Value = match serde_json::from_str(&text) {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!(slack.connection = id, error = %e, "slack socket message is not JSON; ignored");
                            continue;
                        }
                    };
                    let kind = v.get("type").and_then(Value::as_str).unwrap_or("").to_string();
                    if let Some(eid) = v.get("envelope_id").and_then(Value::as_str) {
                        // Acknowledge first, on this connection; then do the work.
                        let ack = json!({"envelope_id": eid}).to_string();
                        if let Err(e) = sink.send(Message::text(ack)).await {
                            return format!("ack failed: {e}");
                        }
                        let this = self.clone();
                        let eid = eid.to_string();
                        let payload = v.get("payload").cloned().unwrap_or(Value::Null);
                        tokio::spawn(async move { this.on_envelope(&eid, &kind, payload).await });
                        continue;
                    }
                    match kind.as_str() {
                        "hello" => {
                            said_hello = true;
                            let n = v.get("num_connections").and_then(|n| n.as_u64()).unwrap_or(0);
                            tracing::info!(slack.connection = id, num_connections = n, "slack socket hello");
                            let _ = events.send(Event::Hello(id));
                        }
                        "disconnect" => {
                            let reason = v.get("reason").and_then(Value::as_str).unwrap_or("").to_string();
                            let _ = events.send(Event::Disconnect(id, reason));
                        }
                        other => tracing::debug!(slack.connection = id, slack.message = other, "slack socket message ignored"),
                    }
                }
            }
        }
    }

    /// An acknowledged envelope: de-duplicated by id, then dispatched.
    async fn on_envelope(&self, envelope_id: &str, kind: &str, payload: Value) {
        let Some(gate) = self.inner.gate() else { return };
        match gate.store.claim_once(&format!("slack:envelope:{envelope_id}"), ENVELOPE_MEMORY, gate.clock.now()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(slack.envelope = envelope_id, "duplicate slack envelope ignored");
                return;
            }
            // Decisions are idempotent in the store; a duplicate cannot decide twice.
            Err(e) => tracing::warn!(slack.envelope = envelope_id, error = %e, "envelope not de-duplicated"),
        }
        if kind != "interactive" {
            tracing::debug!(slack.envelope = envelope_id, slack.envelope_type = kind, "slack envelope ignored");
            return;
        }
        match Interaction::parse(payload) {
            Ok(ix) => {
                let _ = self.dispatch(ix, Source::Socket).await;
            }
            Err(m) => tracing::warn!(slack.envelope = envelope_id, error = %m, "malformed slack envelope ignored"),
        }
    }
}

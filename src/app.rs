//! Assembly: builds the gate from a validated config, and serves both listeners.
//!
//! `App::build` + `App::serve(listeners, shutdown)` is the seam tests use: they bind
//! `127.0.0.1:0`, start the real server in-process, and drive it over sockets.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::{AuditLog, CheckpointCopy, Durability, Event, WriterOptions};
use crate::clock::Clock;
use crate::config::{Config, Secrets, SlackMode, StoreBackend};
use crate::control::Control;
use crate::gate::{token_digest, Gate, Live, Settings};
use crate::metrics::Metrics;
use crate::notify::{GateRef, LogNotifier, Notifiers, PhoneDeps, Retry};
use crate::policy::{PolicyBundle, PolicyError};
use crate::reload::LiveSecrets;
use crate::slack::{Slack, SlackSetupError};
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::ApprovalStore;
use crate::ui::{Keys, LiveFeed, SignInLinks, Ui};
use crate::upstream::{Upstream, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{file}: policy.rules: {source}")]
    Policy { file: String, source: PolicyError },
    #[error("{file}: {source}")]
    Upstream { file: String, source: UpstreamError },
    #[error("{file}: {key}: {message}")]
    Config { file: String, key: String, message: String },
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads the serving rule bundle for `cfg`.
pub fn load_policy(cfg: &Config) -> Result<PolicyBundle, AppError> {
    if !cfg.policy.rules.exists() {
        std::fs::create_dir_all(&cfg.policy.rules).map_err(|e| AppError::Config {
            file: cfg.file.display().to_string(),
            key: "policy.rules".into(),
            message: format!("cannot create {}: {e}", cfg.policy.rules.display()),
        })?;
    }
    PolicyBundle::load(
        &cfg.policy.rules,
        cfg.policy.data.as_deref(),
        cfg.policy.default,
        cfg.policy.mode,
        cfg.route_names(),
    )
    .map_err(|source| AppError::Policy { file: cfg.file.display().to_string(), source })
}

/// Builds the reloadable part of the configuration.
pub fn build_live(cfg: &Config, secrets: &Secrets, policy: Arc<PolicyBundle>) -> Result<Live, AppError> {
    let mut upstreams = HashMap::new();
    for u in &cfg.upstreams {
        let inject = u.inject_value.as_ref().and_then(|r| secrets.get(r));
        let up = Upstream::build(u, inject)
            .map_err(|source| AppError::Upstream { file: cfg.file.display().to_string(), source })?;
        upstreams.insert(u.name.clone(), Arc::new(up));
    }
    let mut agent_tokens = HashMap::new();
    for a in &cfg.agents {
        if let Some(t) = secrets.get(&a.token) {
            agent_tokens.insert(token_digest(t.expose()), a.id.clone());
        }
    }
    let mut approver_tokens = HashMap::new();
    for p in &cfg.approvers {
        if let Some(t) = p.token.as_ref().and_then(|r| secrets.get(r)) {
            approver_tokens.insert(token_digest(t.expose()), p.id.clone());
        }
    }
    let approvers: BTreeMap<_, _> = cfg.approvers.iter().map(|a| (a.id.clone(), a.clone())).collect();
    let mut mcp_servers = HashMap::new();
    for m in &cfg.mcp_servers {
        let server = crate::mcp::gateway::GatewayServer::build(m, secrets)
            .map_err(|source| AppError::Upstream { file: cfg.file.display().to_string(), source })?;
        mcp_servers.insert(m.name.clone(), Arc::new(server));
    }
    Ok(Live { policy, routes: cfg.routes.clone(), approvers, approver_tokens, agent_tokens, upstreams, mcp_servers })
}

/// The audit writer's settings from the config (reads the signing key).
pub fn writer_options(config: &Config, replica: &str) -> Result<WriterOptions, AppError> {
    let a = &config.audit;
    let signing_key = match &a.signing_key_file {
        Some(p) => Some(crate::audit::writer::read_signing_key(p).map_err(|message| AppError::Config {
            file: config.file.display().to_string(),
            key: "audit.signing_key_file".into(),
            message,
        })?),
        None => None,
    };
    Ok(WriterOptions {
        rotate_bytes: a.rotate_bytes,
        rotate_after: a.rotate_after,
        checkpoint_every: a.checkpoint_every,
        checkpoint_interval: a.checkpoint_interval,
        signing_key,
        checkpoint_copy: a.checkpoint_copy.as_deref().map(CheckpointCopy::parse),
        ..WriterOptions::new(a.path.clone(), replica)
    })
}

/// Test and benchmark hooks; `Default` in production.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// When set to true, every audit write fails (fault injection).
    pub audit_fault: Option<Arc<std::sync::atomic::AtomicBool>>,
}

pub struct App {
    pub gate: Arc<Gate>,
    pub control: Arc<Control>,
    pub config: Config,
    /// Present when `[slack]` is configured.
    pub slack: Option<Slack>,
    /// The config and secrets that components read at each use; replaced by a
    /// successful reload.
    pub secrets: LiveSecrets,
}

impl App {
    /// Builds everything; starts the audit chain. `replica` names this process in
    /// the chain's genesis record.
    pub async fn build(
        config: Config,
        secrets: Secrets,
        clock: Arc<dyn Clock>,
        replica: &str,
    ) -> Result<App, AppError> {
        Self::build_with(config, secrets, clock, replica, Hooks::default()).await
    }

    pub async fn build_with(
        config: Config,
        secrets: Secrets,
        clock: Arc<dyn Clock>,
        replica: &str,
        hooks: Hooks,
    ) -> Result<App, AppError> {
        config.check_files().map_err(|e| AppError::Config {
            file: e.file.display().to_string(),
            key: e.key,
            message: e.message,
        })?;
        let policy = Arc::new(load_policy(&config)?);
        let live = build_live(&config, &secrets, policy.clone())?;
        let store: Arc<dyn ApprovalStore> = match config.store.backend {
            StoreBackend::Memory => Arc::new(MemoryStore::new()),
            StoreBackend::Redis => {
                let st = &config.store;
                let url = match st.redis_url_secret.as_ref().and_then(|r| secrets.get(r)) {
                    Some(s) => s.expose().to_string(),
                    None => st.redis_url.clone().unwrap_or_default(),
                };
                let hmac_key = st
                    .hmac_key
                    .as_ref()
                    .and_then(|r| secrets.get(r))
                    .map(|s| s.expose().as_bytes().to_vec())
                    .unwrap_or_default();
                let ca_pem = match &st.ca_file {
                    Some(p) => Some(std::fs::read(p).map_err(|e| AppError::Config {
                        file: config.file.display().to_string(),
                        key: "store.ca_file".into(),
                        message: format!("{}: {e}", p.display()),
                    })?),
                    None => None,
                };
                let opts = RedisOptions {
                    ca_pem,
                    url,
                    key_prefix: st.key_prefix.clone(),
                    hmac_key,
                    op_timeout: Duration::from_secs(1),
                    retention: config.server.decided_retention,
                };
                Arc::new(RedisStore::connect(opts).map_err(|e| AppError::Config {
                    file: config.file.display().to_string(),
                    key: "store.redis_url".into(),
                    message: e.to_string(),
                })?)
            }
        };
        let metrics = Arc::new(Metrics::new());
        let mut wopts = writer_options(&config, replica)?;
        wopts.fault = hooks.audit_fault.clone();
        wopts.batch_seconds = Some(metrics.audit_batch_seconds.clone());
        let audit = AuditLog::start(wopts, clock.clone(), policy.hash())?;
        audit
            .append(
                &Event::PolicyLoaded {
                    policy_bundle: policy.hash().to_string(),
                    files: policy.files().iter().map(|f| f.display().to_string()).collect(),
                    trigger: "start".into(),
                },
                Durability::Synced,
            )
            .await?;
        // Web sessions and sign-in links: signed with a key derived from
        // store.hmac_key when set (shared by replicas), else random per process.
        let keys = Arc::new(Keys::new(config.store.hmac_key.as_ref().and_then(|r| secrets.get(r))));
        let links = Arc::new(SignInLinks::new(keys.clone(), &config.server.public_url, clock.clone()));
        let feed = Arc::new(LiveFeed::new());
        let gate_ref = GateRef::default();
        let mut notifiers =
            Notifiers::new(vec![Arc::new(LogNotifier { public_url: config.server.public_url.clone() }), feed.clone()]);
        // What keeps a secret beyond start-up reads it here; a reload replaces it.
        let live_secrets = LiveSecrets::new(config.clone(), secrets.clone());
        let deps = PhoneDeps {
            metrics: metrics.clone(),
            clock: clock.clone(),
            links: links.clone(),
            gate: gate_ref.clone(),
            retry: Retry::default(),
        };
        let phone = crate::notify::phone_notifiers(&live_secrets, deps).map_err(|e| {
            let (key, message) = match e {
                crate::notify::NotifyError::BadUrl { key, message } => (key, message),
                other @ crate::notify::NotifyError::Tls(_) => ("routes".to_string(), other.to_string()),
            };
            AppError::Config { file: config.file.display().to_string(), key, message }
        })?;
        for n in phone {
            notifiers.push(n);
        }
        let slack = match &config.slack {
            Some(sc) => {
                let s = Slack::new(sc, &live_secrets, &config.server.public_url).map_err(|e| match e {
                    SlackSetupError::Invalid { key, message } => {
                        AppError::Config { file: config.file.display().to_string(), key: key.into(), message }
                    }
                })?;
                notifiers.push(Arc::new(s.clone()));
                Some(s)
            }
            None => None,
        };
        let s = &config.server;
        let settings = Settings {
            hold_timeout: s.hold_timeout,
            grant_ttl: s.grant_ttl,
            reject_memory: s.reject_memory,
            default_expires_after: s.default_expires_after,
            decided_retention: s.decided_retention,
            fail_mode: config.audit.fail_mode,
            max_body_bytes: s.max_body_bytes,
            body_read_timeout: s.body_read_timeout,
        };
        let gate = Gate::new(live, store, audit, clock, metrics, notifiers, settings);
        if let Some(s) = &slack {
            s.attach(&gate);
        }
        gate_ref.set(&gate);
        let ui =
            Arc::new(Ui::new(gate.clone(), keys, links, feed, config.audit.path.clone(), &config.server.public_url));
        let control = Arc::new(Control { gate: gate.clone(), secrets: live_secrets.clone(), slack: slack.clone(), ui });
        Ok(App { gate, control, config, slack, secrets: live_secrets })
    }

    /// The reloader for this app: SIGHUP and rules-directory changes call it.
    pub fn reloader(&self, env: Arc<dyn crate::config::Env>) -> Arc<crate::reload::Reloader> {
        Arc::new(crate::reload::Reloader::new(self.config.clone(), env, self.gate.clone(), self.secrets.clone()))
    }

    /// Serves until `shutdown` resolves, then drains within `server.shutdown_grace`.
    pub async fn serve(
        self,
        agent: TcpListener,
        control: TcpListener,
        shutdown: impl Future<Output = String>,
    ) -> Result<(), AppError> {
        self.serve_on(agent, control, Vec::new(), shutdown).await
    }

    /// [`App::serve`], with the agent listener's connections handed round-robin
    /// to `agent_workers` (one current-thread runtime each); without any, they run
    /// on the runtime that calls this.
    pub async fn serve_on(
        self,
        agent: TcpListener,
        control: TcpListener,
        agent_workers: Vec<tokio::runtime::Handle>,
        shutdown: impl Future<Output = String>,
    ) -> Result<(), AppError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(self.config.server.header_read_timeout)
            .max_buf_size(64 * 1024)
            .keep_alive(true);
        let graceful = Arc::new(GracefulShutdown::new());
        let gate = self.gate.clone();
        let agent_task = {
            let gate = gate.clone();
            let workers = agent_workers.into();
            tokio::spawn(accept_loop(agent, h1.clone(), graceful.clone(), stop_rx.clone(), workers, move |req| {
                let gate = gate.clone();
                async move { Ok::<_, Infallible>(crate::proxy::handle(gate, req).await) }
            }))
        };
        let control_task = {
            let ctl = self.control.clone();
            tokio::spawn(accept_loop(control, h1, graceful.clone(), stop_rx.clone(), Arc::from([]), move |req| {
                let ctl = ctl.clone();
                async move { Ok::<_, Infallible>(ctl.handle(req).await) }
            }))
        };
        let socket_task = self
            .slack
            .clone()
            .filter(|s| s.mode() == SlackMode::Socket)
            .map(|s| tokio::spawn(s.run_socket(stop_rx.clone())));
        tracing::info!("serving");
        let reason = shutdown.await;
        tracing::info!(reason = %reason, "shutting down");
        // Held requests are answered at once; the memory store's pending approvals
        // are interrupted and recorded.
        let interrupted = gate.begin_shutdown().await;
        let _ = stop_tx.send(true);
        let _ = agent_task.await;
        let _ = control_task.await;
        if let Some(t) = socket_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        let grace = self.config.server.shutdown_grace;
        match Arc::try_unwrap(graceful) {
            Ok(g) => {
                if tokio::time::timeout(grace, g.shutdown()).await.is_err() {
                    tracing::warn!(grace = ?grace, "connections still open after the grace period; closing");
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
        if let Some(slack) = &self.slack {
            // Let the last card updates (interrupted approvals) reach Slack.
            let left = slack.drain(grace.min(Duration::from_secs(5))).await;
            if left > 0 {
                tracing::warn!(left, "slack card updates not delivered before shutdown");
            }
        }
        let withdrawn = gate.void_unused_grants().await;
        if !withdrawn.is_empty() {
            tracing::info!(count = withdrawn.len(), "approved grants withdrawn at shutdown");
        }
        if let Err(e) = gate.audit.append(&Event::Shutdown { reason, interrupted }, Durability::Synced).await {
            tracing::error!(error = %e, "shutdown record not written");
        }
        gate.audit.close().await;
        Ok(())
    }
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    builder: http1::Builder,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    workers: Arc<[tokio::runtime::Handle]>,
    handler: F,
) where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<hyper::Response<crate::respond::Body>, Infallible>> + Send + 'static,
{
    let mut next = 0usize;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _peer)) if !workers.is_empty() => {
                    let _ = stream.set_nodelay(true);
                    // The connection moves to a worker runtime: its socket is
                    // registered with that runtime's driver, and its requests, their
                    // forwards and their timers all run on that one thread.
                    let worker = &workers[next % workers.len()];
                    next = next.wrapping_add(1);
                    let std_stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepted connection could not be handed over");
                            continue;
                        }
                    };
                    let (handler, builder, watcher) = (handler.clone(), builder.clone(), graceful.watcher());
                    worker.spawn(async move {
                        let stream = match tokio::net::TcpStream::from_std(std_stream) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::warn!(error = %e, "accepted connection could not be registered");
                                return;
                            }
                        };
                        let conn = builder.serve_connection(TokioIo::new(stream), service_fn(handler));
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    let conn = builder.serve_connection(TokioIo::new(stream), service_fn(handler));
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors or similar: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

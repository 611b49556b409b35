//! Safe reload: on SIGHUP and when the rules directory changes.
//!
//! Validation comes first: the config is parsed and validated, secrets given as
//! `*_file` are re-read, the new rule bundle is compiled and its own `test_*` rules
//! are run. Only if all of that succeeds does the new live configuration replace
//! the old one, in one atomic swap: every request sees the old bundle or the new
//! one, never a mix, and held requests keep the decision they were made with.
//! A refused reload leaves everything as it was; both outcomes are recorded.
//!
//! What cannot change without a restart (listen addresses, the store, the audit
//! path, the runtime size) is reported as such and left unchanged.
//!
//! Secrets held beyond start-up (the metrics token, Slack's tokens and signing
//! secret, webhook and ntfy URLs and webhook secrets) are read through
//! [`LiveSecrets`], which the same successful reload replaces: from then on every
//! use sees the re-read values.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::app::{build_live, load_policy};
use crate::audit::{Durability, Event};
use crate::config::{Config, Env, Secret, SecretRef, Secrets};
use crate::gate::Gate;

/// The configuration and the secrets resolved from it, replaced together by each
/// successful reload. Cheap to clone; all clones share one value.
///
/// Components keep no secret values of their own: they name the secret in the
/// current config (a route by name, an approver by id) and read its current
/// value when they use it, so a rotated `*_file` or `*_env` takes effect on
/// SIGHUP, and a renamed or reordered config entry never lends its secret to
/// another. `Debug` never prints a value.
#[derive(Clone)]
pub struct LiveSecrets(Arc<ArcSwap<Resolved>>);

struct Resolved {
    config: Config,
    secrets: Secrets,
}

impl std::fmt::Debug for LiveSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveSecrets(<redacted>)")
    }
}

impl LiveSecrets {
    pub fn new(config: Config, secrets: Secrets) -> Self {
        LiveSecrets(Arc::new(ArcSwap::from_pointee(Resolved { config, secrets })))
    }

    /// The current value of the secret that `pick` names in the current config;
    /// `None` when the config names none or it is not set.
    pub fn get(&self, pick: impl FnOnce(&Config) -> Option<&SecretRef>) -> Option<Secret> {
        self.read(|config, secrets| pick(config).and_then(|r| secrets.get(r)).cloned())
    }

    /// Reads the current config and secrets together (one consistent pair).
    pub fn read<T>(&self, f: impl FnOnce(&Config, &Secrets) -> T) -> T {
        let r = self.0.load();
        f(&r.config, &r.secrets)
    }

    /// Replaces both at once; readers see the old pair or the new one.
    pub fn replace(&self, config: Config, secrets: Secrets) {
        self.0.store(Arc::new(Resolved { config, secrets }));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(String),
    #[error("rule tests failed: {0}")]
    Tests(String),
}

/// The outcome of a successful reload.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub policy_bundle: String,
    /// Keys that changed but need a restart to take effect.
    pub needs_restart: Vec<String>,
}

pub struct Reloader {
    path: PathBuf,
    env: Arc<dyn Env>,
    gate: Arc<Gate>,
    secrets: LiveSecrets,
    current: Mutex<Config>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("path", &self.path).finish()
    }
}

/// Keys whose change needs a restart.
fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    let mut v = Vec::new();
    let mut check = |k: &str, changed: bool| {
        if changed {
            v.push(k.to_string());
        }
    };
    check("server.listen", old.server.listen != new.server.listen);
    check("server.control_listen", old.server.control_listen != new.server.control_listen);
    check("server.worker_threads", old.server.worker_threads != new.server.worker_threads);
    check("server.max_body_bytes", old.server.max_body_bytes != new.server.max_body_bytes);
    check("server.hold_timeout", old.server.hold_timeout != new.server.hold_timeout);
    check("server.grant_ttl", old.server.grant_ttl != new.server.grant_ttl);
    check("server.reject_memory", old.server.reject_memory != new.server.reject_memory);
    check("store", old.store.backend != new.store.backend || old.store.redis_url != new.store.redis_url);
    check("audit.path", old.audit.path != new.audit.path);
    // Notifiers are built at start: a new webhook or ntfy target needs a restart
    // (the values of existing ones are re-read on reload).
    let targets = |c: &Config| -> Vec<(String, bool, bool)> {
        let mut t: Vec<_> =
            c.routes.iter().map(|(n, r)| (n.clone(), r.webhook_url.is_some(), r.ntfy_url.is_some())).collect();
        t.extend(c.approvers.iter().map(|a| (format!("approver {}", a.id), false, a.ntfy_url.is_some())));
        t
    };
    check("routes (webhook and ntfy targets)", targets(old) != targets(new));
    v
}

impl Reloader {
    pub fn new(config: Config, env: Arc<dyn Env>, gate: Arc<Gate>, secrets: LiveSecrets) -> Self {
        Reloader { path: config.file.clone(), env, gate, secrets, current: Mutex::new(config) }
    }

    /// Validates everything, then swaps atomically. `trigger` names what asked.
    pub async fn reload(&self, trigger: &str) -> Result<Reloaded, ReloadError> {
        let mut current = self.current.lock().await;
        let res = self.prepare(&current).await;
        match res {
            Ok((cfg, secrets, live, needs_restart)) => {
                let hash = live.policy.hash().to_string();
                let files = live.policy.files().iter().map(|f| f.display().to_string()).collect();
                self.gate.replace_live(live);
                self.secrets.replace(cfg.clone(), secrets);
                if let Err(e) = self
                    .gate
                    .audit
                    .append(
                        &Event::PolicyLoaded { policy_bundle: hash.clone(), files, trigger: trigger.into() },
                        Durability::Synced,
                    )
                    .await
                {
                    tracing::error!(error = %e, "policy_loaded record not written");
                }
                for k in &needs_restart {
                    tracing::warn!(key = %k, "changed, but takes effect only after a restart");
                }
                for w in cfg.warnings() {
                    tracing::warn!(warning = %w, "config");
                }
                tracing::info!(policy_bundle = %hash, trigger, "reloaded");
                *current = cfg;
                Ok(Reloaded { policy_bundle: hash, needs_restart })
            }
            Err(e) => {
                tracing::error!(error = %e, trigger, "reload refused; the previous configuration stays active");
                let ev = Event::PolicyRejected {
                    policy_bundle: self.gate.live().policy.hash().to_string(),
                    error: e.to_string(),
                    trigger: trigger.into(),
                };
                if let Err(e) = self.gate.audit.append(&ev, Durability::Synced).await {
                    tracing::error!(error = %e, "policy_rejected record not written");
                }
                Err(e)
            }
        }
    }

    async fn prepare(
        &self,
        current: &Config,
    ) -> Result<(Config, Secrets, crate::gate::Live, Vec<String>), ReloadError> {
        // Off the runtime: a listener given as a host name is resolved while loading.
        let path = self.path.clone();
        let cfg = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| ReloadError::Config(e.to_string()))?
            .map_err(|e| ReloadError::Config(e.to_string()))?;
        // The running Slack service keeps its mode and API base; a reload that
        // changes them (or adds or drops [slack]) would leave it reading secrets its
        // mode does not have. Refused, so nothing changes until a restart.
        let slack_shape = |c: &Config| c.slack.as_ref().map(|s| (s.mode, s.api_base.clone()));
        if slack_shape(current) != slack_shape(&cfg) {
            return Err(ReloadError::Config(format!(
                "{}: slack: [slack], slack.mode or slack.api_base changed: restart to apply it",
                cfg.file.display()
            )));
        }
        cfg.check_files().map_err(|e| ReloadError::Config(e.to_string()))?;
        let (secrets, missing) =
            cfg.resolve_secrets(self.env.as_ref()).map_err(|e| ReloadError::Config(e.to_string()))?;
        if let Some(m) = missing.iter().find(|m| m.required) {
            return Err(ReloadError::Config(format!("{}: {m}", cfg.file.display())));
        }
        crate::notify::check_urls(&cfg, &secrets)
            .map_err(|e| ReloadError::Config(format!("{}: {e}", cfg.file.display())))?;
        let policy = load_policy(&cfg).map_err(|e| ReloadError::Config(e.to_string()))?;
        // The bundle's own tests run before it goes live.
        let rules = cfg.policy.rules.clone();
        let data = cfg.policy.data.clone();
        let results = tokio::task::spawn_blocking(move || crate::policy::testing::run(&rules, data.as_deref()))
            .await
            .map_err(|e| ReloadError::Tests(e.to_string()))?
            .map_err(|e| ReloadError::Tests(e.to_string()))?;
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| format!("{} ({})", r.name, r.detail.as_deref().unwrap_or("failed")))
            .collect();
        if !failed.is_empty() {
            return Err(ReloadError::Tests(failed.join(", ")));
        }
        let live = build_live(&cfg, &secrets, Arc::new(policy)).map_err(|e| ReloadError::Config(e.to_string()))?;
        let needs_restart = restart_only(current, &cfg);
        Ok((cfg, secrets, live, needs_restart))
    }

    pub async fn rules_dir(&self) -> PathBuf {
        self.current.lock().await.policy.rules.clone()
    }
}

/// A cheap fingerprint of a directory's files: names, sizes and modification times.
fn dir_state(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => out.push((p, m.len(), m.modified().ok())),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Watches the rules directory and reloads when it changes (debounced, so a
/// multi-file update is picked up once it has settled).
pub async fn watch_rules(reloader: Arc<Reloader>, every: Duration) {
    let mut last = dir_state(&reloader.rules_dir().await);
    loop {
        tokio::time::sleep(every).await;
        let dir = reloader.rules_dir().await;
        let now = dir_state(&dir);
        if now == last {
            continue;
        }
        // Debounce: wait until two looks in a row agree.
        let mut settled = now;
        loop {
            tokio::time::sleep(every).await;
            let again = dir_state(&dir);
            if again == settled {
                break;
            }
            settled = again;
        }
        last = settled;
        let _ = reloader.reload("rules_changed").await;
    }
}

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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;

use crate::app::{build_live, load_policy};
use crate::audit::{Durability, Event};
use crate::config::{Config, Env};
use crate::gate::Gate;

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
    check("slack", old.slack.is_some() != new.slack.is_some());
    v
}

impl Reloader {
    pub fn new(config: Config, env: Arc<dyn Env>, gate: Arc<Gate>) -> Self {
        Reloader { path: config.file.clone(), env, gate, current: Mutex::new(config) }
    }

    /// Validates everything, then swaps atomically. `trigger` names what asked.
    pub async fn reload(&self, trigger: &str) -> Result<Reloaded, ReloadError> {
        let mut current = self.current.lock().await;
        let res = self.prepare(&current).await;
        match res {
            Ok((cfg, live, needs_restart)) => {
                let hash = live.policy.hash().to_string();
                let files = live.policy.files().iter().map(|f| f.display().to_string()).collect();
                self.gate.replace_live(live);
                if let Err(e) = self
                    .gate
                    .audit
                    .append(
                        Event::PolicyLoaded { policy_bundle: hash.clone(), files, trigger: trigger.into() },
                        Durability::Synced,
                    )
                    .await
                {
                    tracing::error!(error = %e, "policy_loaded record not written");
                }
                for k in &needs_restart {
                    tracing::warn!(key = %k, "changed, but takes effect only after a restart");
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
                if let Err(e) = self.gate.audit.append(ev, Durability::Synced).await {
                    tracing::error!(error = %e, "policy_rejected record not written");
                }
                Err(e)
            }
        }
    }

    async fn prepare(&self, current: &Config) -> Result<(Config, crate::gate::Live, Vec<String>), ReloadError> {
        let cfg = Config::load(&self.path).map_err(|e| ReloadError::Config(e.to_string()))?;
        cfg.check_files().map_err(|e| ReloadError::Config(e.to_string()))?;
        let (secrets, missing) =
            cfg.resolve_secrets(self.env.as_ref()).map_err(|e| ReloadError::Config(e.to_string()))?;
        if let Some(m) = missing.iter().find(|m| m.required) {
            return Err(ReloadError::Config(format!("{}: {m}", cfg.file.display())));
        }
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
        Ok((cfg, live, needs_restart))
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

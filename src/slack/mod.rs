//! Slack: approval cards, decisions from Slack, escalation posts, Socket Mode.
//!
//! The only code that talks to Slack. [`Slack`] is one service with three faces:
//! - a [`crate::notify::Notifier`] ([`notifier`]): every change the gate publishes
//!   becomes a card posted (`chat.postMessage`) or updated in place
//!   (`chat.update`), through one paced queue per channel;
//! - the `POST /slack/interactions` endpoint ([`interactions`]), reached from
//!   [`crate::control`]: signature checked before parsing, replays refused, the
//!   click acknowledged at once, the decision taken through
//!   [`crate::gate::Gate::decide_authorized`];
//! - a Socket Mode client ([`socket`]) that receives the same interactions over a
//!   WebSocket when `slack.mode = "socket"`.
//!
//! Pieces: [`api`] (the thin Web API client), [`card`] (pure Block Kit rendering),
//! [`verify`] (pure v0 signatures). Slack being down never blocks or fails the
//! request path: approvals stay pending and decidable through the admin API, and
//! cards are posted late once Slack answers again.
//!
//! Shared state lives in the store so that any replica can act: a card's channel
//! and `ts` (`set_meta`), seen signatures and envelope ids (`claim_once`).

pub mod api;
pub mod card;
pub mod interactions;
pub mod notifier;
pub mod socket;
pub mod verify;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::approval::Approval;
use crate::clock::Timestamp;
use crate::config::{Secret, SecretRef, SlackConfig, SlackMode};
use crate::gate::{Gate, Live};
use crate::reload::LiveSecrets;

pub use api::{SlackApi, SlackError};

/// How long a user group's member list is trusted (INTERFACE.md: at most 60 s).
pub const USERGROUP_CACHE_TTL: Duration = Duration::from_secs(60);

/// Why the Slack service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SlackSetupError {
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The Slack service. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Slack {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slack").field("api_base", &self.inner.api.base()).field("mode", &self.inner.mode).finish()
    }
}

pub(crate) struct Inner {
    api: SlackApi,
    /// The bot token, signing secret and app-level token are read here at each
    /// use: a reload may rotate them.
    secrets: LiveSecrets,
    mode: SlackMode,
    public_url: String,
    /// Least time between two calls for one channel (Slack: about 1 message/s).
    post_interval: Duration,
    /// Set once the gate exists (the gate owns the notifiers, so it comes later).
    gate: OnceLock<Weak<Gate>>,
    /// One paced queue per channel.
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<notifier::Job>>>,
    /// Jobs queued or running, for a bounded drain at shutdown.
    inflight: AtomicUsize,
    idle: Notify,
    /// User group → (fetched at, members), on the gate's clock.
    groups: Mutex<HashMap<String, CachedGroup>>,
    /// (approval, channel) → digest of the card last sent, to skip no-op updates.
    rendered: Mutex<HashMap<(String, String), [u8; 32]>>,
}

/// A user group's members and when they were fetched (gate clock).
type CachedGroup = (Timestamp, Arc<HashSet<String>>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slack {
    /// Builds the service from `[slack]` and its resolved secrets, which it reads
    /// from `secrets` at each use from then on.
    pub fn new(cfg: &SlackConfig, secrets: &LiveSecrets, public_url: &str) -> Result<Slack, SlackSetupError> {
        let set = |r: Option<&SecretRef>| secrets.read(|_, s| r.is_some_and(|r| s.get(r).is_some()));
        if !set(Some(&cfg.bot_token)) {
            return Err(SlackSetupError::Invalid {
                key: "slack.bot_token_env",
                message: "the bot token is not set".into(),
            });
        }
        if cfg.mode == SlackMode::Http && !set(cfg.signing_secret.as_ref()) {
            return Err(SlackSetupError::Invalid {
                key: "slack.signing_secret_env",
                message: "the signing secret is not set".into(),
            });
        }
        if cfg.mode == SlackMode::Socket && !set(cfg.app_token.as_ref()) {
            return Err(SlackSetupError::Invalid {
                key: "slack.app_token_env",
                message: "socket mode needs the app-level token".into(),
            });
        }
        let api = SlackApi::new(&cfg.api_base)
            .map_err(|message| SlackSetupError::Invalid { key: "slack.api_base", message })?;
        Ok(Slack {
            inner: Arc::new(Inner {
                api,
                secrets: secrets.clone(),
                mode: cfg.mode,
                public_url: public_url.trim_end_matches('/').to_string(),
                post_interval: cfg.post_interval,
                gate: OnceLock::new(),
                queues: Mutex::new(HashMap::new()),
                inflight: AtomicUsize::new(0),
                idle: Notify::new(),
                groups: Mutex::new(HashMap::new()),
                rendered: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Connects the service to the gate it decides through.
    pub fn attach(&self, gate: &Arc<Gate>) {
        let _ = self.inner.gate.set(Arc::downgrade(gate));
    }

    pub fn mode(&self) -> SlackMode {
        self.inner.mode
    }

    /// Waits until every queued card call is done, or `timeout` passes. Returns
    /// how many were still queued.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let n = self.inner.inflight.load(Ordering::Acquire);
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.inner.inflight.load(Ordering::Acquire);
            }
        }
    }
}

impl Inner {
    /// The current bot token.
    fn bot_token(&self) -> Option<Secret> {
        self.secrets.get(|c| Some(&c.slack.as_ref()?.bot_token))
    }

    /// The current signing secret, for HTTP interactions.
    fn signing_secret(&self) -> Option<Secret> {
        self.secrets.get(|c| c.slack.as_ref()?.signing_secret.as_ref())
    }

    /// The current app-level token, for Socket Mode.
    fn app_token(&self) -> Option<Secret> {
        self.secrets.get(|c| c.slack.as_ref()?.app_token.as_ref())
    }

    /// A Web API call with the current bot token. Without one (the reloaded
    /// config has no `[slack]` any more) it fails as Slack would: `not_authed`.
    async fn bot_call(
        &self,
        method: &str,
        args: api::Args<'_>,
        retry: api::Retry,
    ) -> Result<serde_json::Value, SlackError> {
        let Some(token) = self.bot_token() else {
            return Err(SlackError::Api { method: method.to_string(), code: "not_authed".into() });
        };
        self.api.call(method, &token, args, retry).await
    }

    fn gate(&self) -> Option<Arc<Gate>> {
        self.gate.get().and_then(Weak::upgrade)
    }

    /// Business time from the gate's clock (the epoch before it is attached, which
    /// only makes caches look stale).
    fn now(&self) -> Timestamp {
        self.gate().map(|g| g.clock.now()).unwrap_or_default()
    }

    /// Approver id → Slack user id.
    fn slack_users(live: &Live) -> BTreeMap<String, String> {
        live.approvers.iter().filter_map(|(id, a)| a.slack_user.clone().map(|u| (id.clone(), u))).collect()
    }

    /// The members of a user group: cached for at most [`USERGROUP_CACHE_TTL`],
    /// fetched with `usergroups.users.list` otherwise.
    async fn group_members(&self, group: &str) -> Result<Arc<HashSet<String>>, SlackError> {
        let now = self.now();
        if let Some((at, members)) = lock(&self.groups).get(group) {
            if now < at.plus(USERGROUP_CACHE_TTL) && now >= *at {
                return Ok(members.clone());
            }
        }
        let v = self
            .bot_call("usergroups.users.list", api::Args::Form(&[("usergroup", group)]), api::Retry::INTERACTIVE)
            .await?;
        let members: HashSet<String> = v
            .get("users")
            .and_then(|u| u.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let members = Arc::new(members);
        lock(&self.groups).insert(group.to_string(), (now, members.clone()));
        tracing::debug!(slack.usergroup = group, members = members.len(), "user group members fetched");
        Ok(members)
    }
}

/// Who a Slack user is when deciding an approval.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The approver id their `slack_user` maps to, else `slack:<user id>`.
    pub who: String,
    pub user: String,
    /// Member lists of the user groups consulted, as fetched for this decision.
    pub groups: HashMap<String, Arc<HashSet<String>>>,
}

impl Identity {
    /// Whether this person may decide `a` under `live`: a listed approver of one of
    /// its deciding routes, or a member of such a route's `slack_usergroup`.
    pub fn allows(&self, live: &Live, a: &Approval) -> bool {
        live.may_decide(&self.who, a)
            || a.deciding_routes().any(|r| {
                live.routes
                    .get(r)
                    .and_then(|rc| rc.slack_usergroup.as_ref())
                    .and_then(|g| self.groups.get(g))
                    .is_some_and(|m| m.contains(&self.user))
            })
    }
}

impl Inner {
    /// Resolves `user` for `a`: `Ok(Some)` when they may decide it now, `Ok(None)`
    /// when they may not, `Err` when Slack could not be asked about a user group
    /// that might have allowed them (fail closed).
    async fn identity(&self, live: &Live, user: &str, a: &Approval) -> Result<Option<Identity>, SlackError> {
        let mapped = live.approvers.values().find(|p| p.slack_user.as_deref() == Some(user)).map(|p| p.id.clone());
        let mut ident = Identity {
            who: mapped.unwrap_or_else(|| format!("slack:{user}")),
            user: user.to_string(),
            groups: HashMap::new(),
        };
        if ident.allows(live, a) {
            return Ok(Some(ident));
        }
        let groups: Vec<String> = {
            let mut seen = Vec::new();
            for r in a.deciding_routes() {
                if let Some(g) = live.routes.get(r).and_then(|rc| rc.slack_usergroup.clone()) {
                    if !seen.contains(&g) {
                        seen.push(g);
                    }
                }
            }
            seen
        };
        let mut failure = None;
        for g in groups {
            match self.group_members(&g).await {
                Ok(m) => {
                    ident.groups.insert(g, m);
                    if ident.allows(live, a) {
                        return Ok(Some(ident));
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

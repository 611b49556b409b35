//! Configuration: the TOML file, strictly parsed, validated into built values.
//!
//! Two layers, as in INTERFACE.md §2: [`FileConfig`] mirrors the file (serde with
//! `deny_unknown_fields`, so a typo is an error, never a silently ignored key), and
//! [`Config`] holds what the rest of the program uses: socket addresses, parsed URLs,
//! durations, absolute paths and secret *references*. Secret values are resolved
//! separately ([`Config::resolve_secrets`]) because `config check` and `rules test`
//! must work without them.
//!
//! This module does not compile rules (that is [`crate::policy`]) and reads no
//! environment directly: the caller passes an [`Env`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Uri;
use serde::Deserialize;

/// Exit code for bad configuration (BSD `EX_USAGE`), part of the CLI contract.
pub const EXIT_BAD_CONFIG: u8 = 64;

/// Agent and approver tokens shorter than this draw a warning.
pub const MIN_TOKEN_LEN: usize = 16;

/// `store.redis_url` when `backend = "redis"` names none (as redis-cli's default).
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// A configuration error: always names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { file: file.to_path_buf(), key: key.into(), message: message.into() }
    }
}

/// Where environment variables come from. Library code never calls `std::env`.
pub trait Env: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment; used only at the CLI edge.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed map, for tests.
#[derive(Debug, Default, Clone)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl MapEnv {
    pub fn with(mut self, k: &str, v: &str) -> Self {
        self.0.insert(k.to_string(), v.to_string());
        self
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// A secret value. `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a secret comes from: a `*_env` key or a `*_file` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env { key: String, var: String },
    File { key: String, path: PathBuf },
}

impl SecretRef {
    /// The config key that named this secret, e.g. `agent[0].token_env`.
    pub fn key(&self) -> &str {
        match self {
            SecretRef::Env { key, .. } | SecretRef::File { key, .. } => key,
        }
    }

    /// Reads the secret. `Ok(None)` when the variable is unset or the file missing.
    pub fn resolve(&self, env: &dyn Env) -> Result<Option<Secret>, String> {
        match self {
            SecretRef::Env { var, .. } => Ok(env
                .var(var)
                .map(|v| v.trim_end_matches(['\r', '\n']).to_string())
                .filter(|v| !v.is_empty())
                .map(Secret::new)),
            SecretRef::File { path, .. } => match std::fs::read_to_string(path) {
                Ok(s) => {
                    let v = s.trim_end_matches(['\r', '\n']);
                    Ok((!v.is_empty()).then(|| Secret::new(v)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SecretRef::Env { var, .. } => format!("environment variable {var}"),
            SecretRef::File { path, .. } => format!("file {}", path.display()),
        }
    }
}

// ---------------------------------------------------------------------------
// Layer 1: the file, as written.
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: FileServer,
    #[serde(default)]
    pub upstream: Vec<FileUpstream>,
    #[serde(default)]
    pub agent: Vec<FileAgent>,
    #[serde(default)]
    pub approver: Vec<FileApprover>,
    #[serde(default)]
    pub routes: BTreeMap<String, FileRoute>,
    pub policy: FilePolicy,
    #[serde(default)]
    pub store: FileStore,
    #[serde(default)]
    pub audit: FileAudit,
    pub slack: Option<FileSlack>,
    #[serde(default)]
    pub mcp_server: Vec<FileMcpServer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub listen: String,
    pub control_listen: String,
    pub public_url: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub hold_timeout: Option<String>,
    pub grant_ttl: Option<String>,
    pub reject_memory: Option<String>,
    pub shutdown_grace: Option<String>,
    pub worker_threads: Option<usize>,
    pub metrics_token_env: Option<String>,
    pub metrics_token_file: Option<String>,
    /// Extension: how long a client may take to send its request headers.
    pub header_read_timeout: Option<String>,
    /// Extension: how long a client may take to send its request body.
    pub body_read_timeout: Option<String>,
    /// Extension: how long decided approvals stay visible in the memory store.
    pub decided_retention: Option<String>,
    /// Extension: expiry of approvals whose rule names no `expires_after`.
    pub default_expires_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub name: String,
    pub url: String,
    pub inject_header: Option<String>,
    pub inject_value_env: Option<String>,
    pub inject_value_file: Option<String>,
    pub ca_file: Option<String>,
    /// Extension: TCP+TLS connect timeout.
    pub connect_timeout: Option<String>,
    /// Extension: time to the response headers.
    pub response_timeout: Option<String>,
    /// Extension: cap on concurrent requests to this upstream, all agent workers
    /// together (each worker keeps its own idle connections).
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAgent {
    pub id: String,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApprover {
    pub id: String,
    pub slack_user: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
    /// Extension: display name for cards and the web page.
    pub name: Option<String>,
    /// Extension: ntfy topic URL for this approver's personal sign-in links.
    pub ntfy_url_env: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    #[serde(default)]
    pub approvers: Vec<String>,
    pub slack_channel: Option<String>,
    pub slack_usergroup: Option<String>,
    pub escalate_to: Option<String>,
    pub webhook_url_env: Option<String>,
    pub webhook_url_file: Option<String>,
    pub webhook_secret_env: Option<String>,
    pub webhook_secret_file: Option<String>,
    pub ntfy_url_env: Option<String>,
    pub ntfy_url_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    pub rules: String,
    pub data: Option<String>,
    pub default: Option<String>,
    pub mode: Option<String>,
    /// Extension: how often the rules directory is checked for changes ("0s": never).
    pub watch_interval: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileStore {
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    pub redis_url_env: Option<String>,
    pub key_prefix: Option<String>,
    pub hmac_key_env: Option<String>,
    pub hmac_key_file: Option<String>,
    /// Extension: PEM CA certificates trusted for `rediss://` instead of the
    /// system's roots.
    pub ca_file: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileAudit {
    pub path: Option<String>,
    pub signing_key_file: Option<String>,
    pub checkpoint_copy: Option<String>,
    pub fail_mode: Option<String>,
    /// Extension: rotate a chain file past this many bytes.
    pub rotate_bytes: Option<u64>,
    /// Extension: rotate a chain file older than this.
    pub rotate_after: Option<String>,
    /// Extension: a checkpoint every N records.
    pub checkpoint_every: Option<u64>,
    /// Extension: a checkpoint at least this often while records are written.
    pub checkpoint_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSlack {
    pub bot_token_env: Option<String>,
    pub bot_token_file: Option<String>,
    pub signing_secret_env: Option<String>,
    pub signing_secret_file: Option<String>,
    pub api_base: Option<String>,
    pub mode: Option<String>,
    pub app_token_env: Option<String>,
    pub app_token_file: Option<String>,
    /// Extension: least time between two calls for one channel (Slack allows
    /// about one message per second per channel). Default "1s".
    pub post_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMcpServer {
    pub name: String,
    pub url: Option<String>,
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub inject_header: Option<String>,
    pub inject_value_env: Option<String>,
    pub inject_value_file: Option<String>,
}

// ---------------------------------------------------------------------------
// Layer 2: validated values.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, absolute.
    pub file: PathBuf,
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub agents: Vec<AgentConfig>,
    pub approvers: Vec<ApproverConfig>,
    pub routes: BTreeMap<String, RouteConfig>,
    pub policy: PolicyConfig,
    pub store: StoreConfig,
    pub audit: AuditConfig,
    pub slack: Option<SlackConfig>,
    pub mcp_servers: Vec<McpServerConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub control_listen: SocketAddr,
    pub public_url: String,
    pub max_body_bytes: usize,
    pub hold_timeout: Duration,
    pub grant_ttl: Duration,
    pub reject_memory: Duration,
    pub shutdown_grace: Duration,
    pub worker_threads: usize,
    pub metrics_token: Option<SecretRef>,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub decided_retention: Duration,
    pub default_expires_after: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: Uri,
    pub inject_header: Option<HeaderName>,
    pub inject_value: Option<SecretRef>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub id: String,
    pub token: SecretRef,
}

#[derive(Debug, Clone)]
pub struct ApproverConfig {
    pub id: String,
    pub name: Option<String>,
    pub slack_user: Option<String>,
    pub token: Option<SecretRef>,
    pub ntfy_url: Option<SecretRef>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    pub approvers: Vec<String>,
    pub slack_channel: Option<String>,
    pub slack_usergroup: Option<String>,
    pub escalate_to: Option<String>,
    pub webhook_url: Option<SecretRef>,
    pub webhook_secret: Option<SecretRef>,
    pub ntfy_url: Option<SecretRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultDecision {
    Deny,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    Enforce,
    Shadow,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub rules: PathBuf,
    pub data: Option<PathBuf>,
    pub default: DefaultDecision,
    pub mode: PolicyMode,
    /// Zero: the rules directory is not watched (SIGHUP still reloads).
    pub watch_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Memory,
    Redis,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub redis_url: Option<String>,
    pub redis_url_secret: Option<SecretRef>,
    pub key_prefix: String,
    pub hmac_key: Option<SecretRef>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    Closed,
    OpenAllowed,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    pub signing_key_file: Option<PathBuf>,
    pub checkpoint_copy: Option<String>,
    pub fail_mode: FailMode,
    pub rotate_bytes: u64,
    pub rotate_after: Duration,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlackMode {
    Http,
    Socket,
}

#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub bot_token: SecretRef,
    pub signing_secret: Option<SecretRef>,
    pub api_base: String,
    pub mode: SlackMode,
    pub app_token: Option<SecretRef>,
    pub post_interval: Duration,
}

#[derive(Debug, Clone)]
pub enum McpTransport {
    Http { url: Uri },
    Stdio { command: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct McpServerConfig {
    pub name: String,
    pub transport: McpTransport,
    /// Child variable name → our environment variable holding its value.
    pub env: BTreeMap<String, SecretRef>,
    pub inject_header: Option<HeaderName>,
    pub inject_value: Option<SecretRef>,
}

/// Every secret the config names, resolved. Built by [`Config::resolve_secrets`].
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, Secret>,
}

impl Secrets {
    /// The value of the secret named by `r`, if it was set.
    pub fn get(&self, r: &SecretRef) -> Option<&Secret> {
        self.values.get(r.key())
    }

    pub fn insert(&mut self, r: &SecretRef, v: Secret) {
        self.values.insert(r.key().to_string(), v);
    }
}

/// A secret that is named by the config but not set.
#[derive(Debug, Clone)]
pub struct MissingSecret {
    pub key: String,
    pub source: String,
    pub required: bool,
    /// Why a file that is there could not be read (only from
    /// [`Config::resolve_secrets_with`] with `unreadable_is_missing`).
    pub unreadable: Option<String>,
}

impl fmt::Display for MissingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.unreadable {
            Some(e) => write!(f, "{}: {e}", self.key),
            None => write!(f, "{}: {} is not set", self.key, self.source),
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = absolute(path);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError::new(&file, "(file)", format!("cannot read: {e}")))?;
        Self::parse(&file, &text)
    }

    /// Parses and validates `text`, as if read from `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|s| format!(" (line {})", line_of(text, s.start))).unwrap_or_default();
            let key = if path.is_empty() || path == "." { "(file)".to_string() } else { path };
            ConfigError::new(file, key, format!("{}{line}", inner.message().trim()))
        })?;
        Validator { file, raw: &raw }.validate()
    }

    /// The directory relative paths resolve against.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    /// Every secret reference in the config with whether `serve` needs it.
    pub fn secret_refs(&self) -> Vec<(&SecretRef, bool)> {
        let mut out: Vec<(&SecretRef, bool)> = Vec::new();
        if let Some(r) = &self.server.metrics_token {
            out.push((r, true));
        }
        for u in &self.upstreams {
            if let Some(r) = &u.inject_value {
                out.push((r, true));
            }
        }
        for a in &self.agents {
            out.push((&a.token, true));
        }
        for a in &self.approvers {
            if let Some(r) = &a.token {
                out.push((r, true));
            }
            if let Some(r) = &a.ntfy_url {
                out.push((r, false));
            }
        }
        for r in self.routes.values() {
            for s in [&r.webhook_url, &r.webhook_secret, &r.ntfy_url].into_iter().flatten() {
                out.push((s, true));
            }
        }
        if let Some(r) = &self.store.redis_url_secret {
            out.push((r, true));
        }
        if let Some(r) = &self.store.hmac_key {
            out.push((r, true));
        }
        if let Some(s) = &self.slack {
            out.push((&s.bot_token, true));
            if let Some(r) = &s.signing_secret {
                out.push((r, s.mode == SlackMode::Http));
            }
            if let Some(r) = &s.app_token {
                out.push((r, true));
            }
        }
        for m in &self.mcp_servers {
            if let Some(r) = &m.inject_value {
                out.push((r, true));
            }
            for r in m.env.values() {
                out.push((r, true));
            }
        }
        out
    }

    /// Resolves every secret. Returns the values and the ones that are unset.
    pub fn resolve_secrets(&self, env: &dyn Env) -> Result<(Secrets, Vec<MissingSecret>), ConfigError> {
        self.resolve_secrets_with(env, false)
    }

    /// [`Config::resolve_secrets`]; with `unreadable_is_missing`, a secret file that
    /// cannot be read (a CI runner that is not its owner) is listed with the missing
    /// ones instead of failing: `config check` only warns about it.
    pub fn resolve_secrets_with(
        &self,
        env: &dyn Env,
        unreadable_is_missing: bool,
    ) -> Result<(Secrets, Vec<MissingSecret>), ConfigError> {
        let mut secrets = Secrets::default();
        let mut missing = Vec::new();
        for (r, required) in self.secret_refs() {
            let gone =
                |unreadable| MissingSecret { key: r.key().to_string(), source: r.describe(), required, unreadable };
            match r.resolve(env) {
                Ok(Some(v)) => secrets.insert(r, v),
                Ok(None) => missing.push(gone(None)),
                Err(e) if unreadable_is_missing => missing.push(gone(Some(e))),
                Err(e) => return Err(ConfigError::new(&self.file, r.key(), e)),
            }
        }
        // A token shared by an agent and an approver would let an agent decide.
        for a in &self.agents {
            let Some(at) = secrets.get(&a.token) else {
                continue;
            };
            for p in &self.approvers {
                if let Some(pt) = p.token.as_ref().and_then(|r| secrets.get(r)) {
                    if at == pt {
                        return Err(ConfigError::new(
                            &self.file,
                            p.token.as_ref().map(|r| r.key()).unwrap_or("approver"),
                            format!("approver {} has the same token as agent {}; tokens must differ", p.id, a.id),
                        ));
                    }
                }
            }
        }
        if let Some(url) = self.store.redis_url_secret.as_ref().and_then(|r| secrets.get(r)) {
            if !url.expose().starts_with("redis://") && !url.expose().starts_with("rediss://") {
                return Err(ConfigError::new(
                    &self.file,
                    "store.redis_url_env",
                    "must hold a redis:// or rediss:// URL",
                ));
            }
        }
        Ok((secrets, missing))
    }

    /// Settings that are valid but weaken a guarantee: printed by `config check` and
    /// logged by `serve` at start. Never a secret's value.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (name, r) in &self.routes {
            if r.webhook_url.is_some() && r.webhook_secret.is_none() {
                w.push(format!(
                    "{}: routes.{name}.webhook_secret_env is not set: the route's webhooks are sent unsigned, \
                     so a receiver cannot tell them from forged ones",
                    self.file.display()
                ));
            }
        }
        if self.store.backend == StoreBackend::Redis && self.store.hmac_key.is_none() {
            w.push(format!(
                "{}: store.hmac_key_env is not set: decisions in Redis carry an HMAC under an empty key, so a \
                 replica cannot tell a decision forged by someone with write access to Redis from a real one; \
                 set a key shared by the replicas",
                self.file.display()
            ));
        }
        w
    }

    /// Warnings about the values of the secrets that are set (never the values
    /// themselves): agent and approver tokens shorter than [`MIN_TOKEN_LEN`] can be
    /// guessed by anyone who can reach a listener.
    pub fn secret_warnings(&self, secrets: &Secrets) -> Vec<String> {
        let tokens = self
            .agents
            .iter()
            .map(|a| (format!("agent {}", a.id), Some(&a.token)))
            .chain(self.approvers.iter().map(|p| (format!("approver {}", p.id), p.token.as_ref())));
        tokens
            .filter_map(|(who, r)| {
                let r = r?;
                let v = secrets.get(r)?;
                (v.expose().trim().chars().count() < MIN_TOKEN_LEN).then(|| {
                    format!(
                        "{}: {}: the token of {who} is shorter than {MIN_TOKEN_LEN} characters: use a long random one",
                        self.file.display(),
                        r.key()
                    )
                })
            })
            .collect()
    }

    /// Checks that the files the config names exist, and that the directories it
    /// writes to are (or can be made) directories; run before serving, on reload and
    /// by `config check`, not by plain parsing (so an example config parses anywhere).
    pub fn check_files(&self) -> Result<(), ConfigError> {
        self.check_files_with(true)
    }

    /// [`Config::check_files`]; with `secret_files` false, the secret files
    /// (`audit.signing_key_file`) are left to the caller: `config check` only warns
    /// about one it cannot read, as about an unset variable.
    pub fn check_files_with(&self, secret_files: bool) -> Result<(), ConfigError> {
        let mut files: Vec<(String, &Path)> = Vec::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            if let Some(p) = &u.ca_file {
                files.push((format!("upstream[{i}].ca_file"), p));
            }
        }
        if let Some(p) = &self.policy.data {
            files.push(("policy.data".to_string(), p));
        }
        if let Some(p) = &self.store.ca_file {
            files.push(("store.ca_file".to_string(), p));
        }
        if let (Some(p), true) = (&self.audit.signing_key_file, secret_files) {
            files.push(("audit.signing_key_file".to_string(), p));
        }
        for (key, p) in files {
            if !p.is_file() {
                return Err(ConfigError::new(&self.file, key, format!("{} does not exist", p.display())));
            }
        }
        // Directories that are created when missing: what exists of them must be
        // a directory.
        let mut dirs: Vec<(&str, &Path)> = vec![("audit.path", &self.audit.path)];
        if let Some(c) = self.audit.checkpoint_copy.as_deref() {
            if !(c.starts_with("http://") || c.starts_with("https://")) {
                dirs.push(("audit.checkpoint_copy", Path::new(c)));
            }
        }
        for (key, dir) in dirs {
            if let Some(blocker) = dir.ancestors().find(|a| a.exists() && !a.is_dir()) {
                let message = if blocker == dir {
                    format!("{} exists and is not a directory", dir.display())
                } else {
                    format!("{} cannot be a directory: {} is not one", dir.display(), blocker.display())
                };
                return Err(ConfigError::new(&self.file, key, message));
            }
        }
        Ok(())
    }

    pub fn route_names(&self) -> BTreeSet<String> {
        self.routes.keys().cloned().collect()
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

struct Validator<'a> {
    file: &'a Path,
    raw: &'a FileConfig,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, key, msg)
    }

    fn dir(&self) -> PathBuf {
        self.file.parent().unwrap_or(Path::new(".")).to_path_buf()
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir().join(p)
        }
    }

    fn duration(&self, key: &str, v: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|e| self.err(key, e)),
        }
    }

    fn secret(&self, key: &str, env: Option<&String>, file: Option<&String>) -> Result<Option<SecretRef>, ConfigError> {
        match (env, file) {
            (Some(_), Some(_)) => {
                Err(self.err(format!("{key}_env"), format!("set only one of {key}_env and {key}_file")))
            }
            (Some(var), None) => {
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(self.err(
                        format!("{key}_env"),
                        "must name an environment variable (letters, digits, _), not hold a secret",
                    ));
                }
                Ok(Some(SecretRef::Env { key: format!("{key}_env"), var: var.clone() }))
            }
            (None, Some(p)) => Ok(Some(SecretRef::File { key: format!("{key}_file"), path: self.path(p) })),
            (None, None) => Ok(None),
        }
    }

    /// An address such as "127.0.0.1:8080" or "[::1]:8080", or a host name with a
    /// port ("localhost:8080"), resolved now; of several addresses the first IPv4
    /// one is taken, else the first. The listener binds that one address, so the
    /// loopback checks below hold for what is bound.
    fn addr(&self, key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
        if let Ok(a) = v.parse::<SocketAddr>() {
            return Ok(a);
        }
        let bad = |why: String| {
            self.err(key, format!("{v:?} is not an address such as \"127.0.0.1:8080\" or \"localhost:8080\"{why}"))
        };
        let (host, port) = v.rsplit_once(':').ok_or_else(|| bad(": no port".into()))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad(String::new()));
        }
        let addrs: Vec<SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(v).map_err(|e| bad(format!(": {e}")))?.collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| bad(": the name resolves to no address".into()))
    }

    fn validate(&self) -> Result<Config, ConfigError> {
        let raw = self.raw;
        let s = &raw.server;
        let listen = self.addr("server.listen", &s.listen)?;
        let control_listen = self.addr("server.control_listen", &s.control_listen)?;
        if listen == control_listen
            || (listen.port() == control_listen.port()
                && (listen.ip().is_unspecified() || control_listen.ip().is_unspecified()))
        {
            return Err(self.err(
                "server.control_listen",
                "must differ from server.listen: agents must never reach the control endpoints",
            ));
        }
        let public_url = match &s.public_url {
            Some(u) => {
                let uri: Uri = u.parse().map_err(|e| self.err("server.public_url", format!("not a URL: {e}")))?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) {
                    return Err(self.err("server.public_url", "must be an http:// or https:// URL"));
                }
                u.trim_end_matches('/').to_string()
            }
            None => format!("http://{control_listen}"),
        };
        let max_body_bytes = match s.max_body_bytes {
            None => 1024 * 1024,
            Some(0) => return Err(self.err("server.max_body_bytes", "must be positive")),
            Some(n) if n > 256 * 1024 * 1024 => {
                return Err(self.err("server.max_body_bytes", "must be at most 256 MiB"))
            }
            Some(n) => n as usize,
        };
        let hold_timeout = self.duration("server.hold_timeout", s.hold_timeout.as_deref(), Duration::from_secs(55))?;
        let grant_ttl = self.duration("server.grant_ttl", s.grant_ttl.as_deref(), Duration::from_secs(15 * 60))?;
        let reject_memory =
            self.duration("server.reject_memory", s.reject_memory.as_deref(), Duration::from_secs(10 * 60))?;
        let shutdown_grace =
            self.duration("server.shutdown_grace", s.shutdown_grace.as_deref(), Duration::from_secs(10))?;
        let header_read_timeout =
            self.duration("server.header_read_timeout", s.header_read_timeout.as_deref(), Duration::from_secs(10))?;
        if header_read_timeout.is_zero() {
            return Err(self.err("server.header_read_timeout", "must be positive"));
        }
        let body_read_timeout =
            self.duration("server.body_read_timeout", s.body_read_timeout.as_deref(), Duration::from_secs(30))?;
        if body_read_timeout.is_zero() {
            return Err(self.err("server.body_read_timeout", "must be positive"));
        }
        let decided_retention =
            self.duration("server.decided_retention", s.decided_retention.as_deref(), Duration::from_secs(24 * 3600))?;
        let default_expires_after = self.duration(
            "server.default_expires_after",
            s.default_expires_after.as_deref(),
            Duration::from_secs(24 * 3600),
        )?;
        if default_expires_after.is_zero() {
            return Err(self.err("server.default_expires_after", "must be positive"));
        }
        let worker_threads = s.worker_threads.unwrap_or(0);
        if worker_threads > 1024 {
            return Err(self.err("server.worker_threads", "must be at most 1024"));
        }
        let metrics_token =
            self.secret("server.metrics_token", s.metrics_token_env.as_ref(), s.metrics_token_file.as_ref())?;

        // Upstreams.
        if raw.upstream.is_empty() {
            return Err(self.err("upstream", "at least one [[upstream]] is required"));
        }
        let mut upstreams = Vec::new();
        let mut names = BTreeSet::new();
        for (i, u) in raw.upstream.iter().enumerate() {
            let k = |f: &str| format!("upstream[{i}].{f}");
            if !valid_name(&u.name) {
                return Err(self.err(k("name"), format!("{:?} must be 1-64 of a-z, A-Z, 0-9, '-', '_', '.'", u.name)));
            }
            if matches!(u.name.as_str(), "v1" | "mcp") {
                return Err(self.err(k("name"), format!("{:?} is reserved", u.name)));
            }
            if !names.insert(u.name.clone()) {
                return Err(self.err(k("name"), format!("{:?} is used twice", u.name)));
            }
            let url: Uri = u.url.parse().map_err(|e| self.err(k("url"), format!("not a URL: {e}")))?;
            if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
                return Err(self.err(k("url"), "must be an absolute http:// or https:// URL"));
            }
            if url.query().is_some() {
                return Err(self.err(k("url"), "must not have a query"));
            }
            if points_at(&u.url, &url, control_listen, &s.control_listen) {
                return Err(
                    self.err(k("url"), "points at server.control_listen: an agent could reach the decision endpoints")
                );
            }
            if points_at(&u.url, &url, listen, &s.listen) {
                return Err(self.err(k("url"), "points at server.listen: the proxy would loop"));
            }
            let inject_header = match &u.inject_header {
                Some(h) => Some(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| self.err(k("inject_header"), "not a header name"))?,
                ),
                None => None,
            };
            let inject_value =
                self.secret(&k("inject_value"), u.inject_value_env.as_ref(), u.inject_value_file.as_ref())?;
            if inject_value.is_some() != inject_header.is_some() {
                return Err(self
                    .err(k("inject_header"), "inject_header and inject_value_env (or inject_value_file) go together"));
            }
            let ca_file = u.ca_file.as_deref().map(|p| self.path(p));
            let max_connections = u.max_connections.unwrap_or(512);
            if max_connections == 0 {
                return Err(self.err(k("max_connections"), "must be positive"));
            }
            upstreams.push(UpstreamConfig {
                name: u.name.clone(),
                url,
                inject_header,
                inject_value,
                ca_file,
                connect_timeout: self.duration(
                    &k("connect_timeout"),
                    u.connect_timeout.as_deref(),
                    Duration::from_secs(5),
                )?,
                response_timeout: self.duration(
                    &k("response_timeout"),
                    u.response_timeout.as_deref(),
                    Duration::from_secs(60),
                )?,
                max_connections,
            });
        }

        // Agents.
        let mut agents = Vec::new();
        let mut ids = BTreeSet::new();
        for (i, a) in raw.agent.iter().enumerate() {
            let k = |f: &str| format!("agent[{i}].{f}");
            if !valid_name(&a.id) || a.id == "anonymous" {
                return Err(self.err(k("id"), format!("{:?} is not a valid agent id", a.id)));
            }
            if !ids.insert(a.id.clone()) {
                return Err(self.err(k("id"), format!("{:?} is used twice", a.id)));
            }
            let token = self
                .secret(&k("token"), a.token_env.as_ref(), a.token_file.as_ref())?
                .ok_or_else(|| self.err(k("token_env"), "an agent needs token_env or token_file"))?;
            agents.push(AgentConfig { id: a.id.clone(), token });
        }
        if agents.is_empty() && !listen.ip().is_loopback() {
            return Err(self.err(
                "server.listen",
                "is not a loopback address, so at least one [[agent]] with a token is required",
            ));
        }

        // Approvers.
        let mut approvers = Vec::new();
        let mut pids = BTreeSet::new();
        for (i, p) in raw.approver.iter().enumerate() {
            let k = |f: &str| format!("approver[{i}].{f}");
            if !valid_name(&p.id) {
                return Err(self.err(k("id"), format!("{:?} is not a valid approver id", p.id)));
            }
            if !pids.insert(p.id.clone()) {
                return Err(self.err(k("id"), format!("{:?} is used twice", p.id)));
            }
            if ids.contains(&p.id) {
                return Err(self.err(k("id"), format!("{:?} is also an agent id", p.id)));
            }
            let token = self.secret(&k("token"), p.token_env.as_ref(), p.token_file.as_ref())?;
            for a in &agents {
                if let (Some(SecretRef::Env { var: av, .. }), Some(SecretRef::Env { var: pv, .. })) =
                    (Some(&a.token), token.as_ref())
                {
                    if av == pv {
                        return Err(
                            self.err(k("token_env"), format!("approver {} and agent {} share one token", p.id, a.id))
                        );
                    }
                }
            }
            approvers.push(ApproverConfig {
                id: p.id.clone(),
                name: p.name.clone(),
                slack_user: p.slack_user.clone(),
                token,
                ntfy_url: self.secret(&k("ntfy_url"), p.ntfy_url_env.as_ref(), None)?,
            });
        }

        // Routes.
        let mut routes = BTreeMap::new();
        for (name, r) in &raw.routes {
            let k = |f: &str| format!("routes.{name}.{f}");
            if !valid_name(name) {
                return Err(self.err(format!("routes.{name}"), "not a valid route name"));
            }
            for a in &r.approvers {
                if !pids.contains(a) {
                    return Err(self.err(k("approvers"), format!("unknown approver {a:?}")));
                }
            }
            if let Some(e) = &r.escalate_to {
                if !raw.routes.contains_key(e) {
                    return Err(self.err(k("escalate_to"), format!("unknown route {e:?}")));
                }
                if e == name {
                    return Err(self.err(k("escalate_to"), "a route cannot escalate to itself"));
                }
            }
            if (r.slack_channel.is_some() || r.slack_usergroup.is_some()) && raw.slack.is_none() {
                return Err(self.err(k("slack_channel"), "needs a [slack] section"));
            }
            let webhook_url =
                self.secret(&k("webhook_url"), r.webhook_url_env.as_ref(), r.webhook_url_file.as_ref())?;
            let webhook_secret =
                self.secret(&k("webhook_secret"), r.webhook_secret_env.as_ref(), r.webhook_secret_file.as_ref())?;
            routes.insert(
                name.clone(),
                RouteConfig {
                    approvers: r.approvers.clone(),
                    slack_channel: r.slack_channel.clone(),
                    slack_usergroup: r.slack_usergroup.clone(),
                    escalate_to: r.escalate_to.clone(),
                    webhook_url,
                    webhook_secret,
                    ntfy_url: self.secret(&k("ntfy_url"), r.ntfy_url_env.as_ref(), r.ntfy_url_file.as_ref())?,
                },
            );
        }

        // Policy.
        let p = &raw.policy;
        let policy = PolicyConfig {
            rules: self.path(&p.rules),
            data: p.data.as_deref().map(|d| self.path(d)),
            default: match p.default.as_deref() {
                None | Some("deny") => DefaultDecision::Deny,
                Some("allow") => DefaultDecision::Allow,
                Some(o) => return Err(self.err("policy.default", format!("{o:?} is not \"deny\" or \"allow\""))),
            },
            watch_interval: self.duration(
                "policy.watch_interval",
                p.watch_interval.as_deref(),
                Duration::from_secs(2),
            )?,
            mode: match p.mode.as_deref() {
                None | Some("enforce") => PolicyMode::Enforce,
                Some("shadow") => PolicyMode::Shadow,
                Some(o) => return Err(self.err("policy.mode", format!("{o:?} is not \"enforce\" or \"shadow\""))),
            },
        };

        // Store.
        let st = &raw.store;
        let backend = match st.backend.as_deref() {
            None | Some("memory") => StoreBackend::Memory,
            Some("redis") => StoreBackend::Redis,
            Some(o) => return Err(self.err("store.backend", format!("{o:?} is not \"memory\" or \"redis\""))),
        };
        if let Some(u) = &st.redis_url {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(self.err("store.redis_url", "must be a redis:// or rediss:// URL"));
            }
            if url_has_password(u) {
                return Err(self.err(
                    "store.redis_url",
                    "holds a password; put the whole URL in the variable named by store.redis_url_env",
                ));
            }
        }
        let redis_url_secret = self.secret("store.redis_url", st.redis_url_env.as_ref(), None)?;
        // Like redis-cli, a local server on the default port when no URL is given.
        let redis_url = match (&st.redis_url, &redis_url_secret) {
            (None, None) if backend == StoreBackend::Redis => Some(DEFAULT_REDIS_URL.to_string()),
            (u, _) => u.clone(),
        };
        let key_prefix = st.key_prefix.clone().unwrap_or_else(|| "ap:".to_string());
        if key_prefix.contains(['{', '}']) || key_prefix.chars().any(|c| c.is_whitespace()) {
            return Err(self.err("store.key_prefix", "must not hold braces or white space"));
        }
        let hmac_key = self.secret("store.hmac_key", st.hmac_key_env.as_ref(), st.hmac_key_file.as_ref())?;
        if st.ca_file.is_some() && st.redis_url.as_deref().is_some_and(|u| !u.starts_with("rediss://")) {
            return Err(self.err("store.ca_file", "is for TLS: redis_url must be a rediss:// URL"));
        }
        let store = StoreConfig {
            backend,
            redis_url,
            redis_url_secret,
            key_prefix,
            hmac_key,
            ca_file: st.ca_file.as_deref().map(|p| self.path(p)),
        };

        // Audit.
        let au = &raw.audit;
        let audit = AuditConfig {
            path: self.path(au.path.as_deref().unwrap_or("var/audit")),
            signing_key_file: au.signing_key_file.as_deref().map(|p| self.path(p)),
            checkpoint_copy: au.checkpoint_copy.as_ref().map(|c| {
                if c.starts_with("http://") || c.starts_with("https://") {
                    c.clone()
                } else {
                    self.path(c).to_string_lossy().into_owned()
                }
            }),
            fail_mode: match au.fail_mode.as_deref() {
                None | Some("closed") => FailMode::Closed,
                Some("open_allowed") => FailMode::OpenAllowed,
                Some(o) => {
                    return Err(self.err("audit.fail_mode", format!("{o:?} is not \"closed\" or \"open_allowed\"")))
                }
            },
            rotate_bytes: match au.rotate_bytes {
                Some(n) if n < 4096 => return Err(self.err("audit.rotate_bytes", "must be at least 4096")),
                Some(n) => n,
                None => 64 * 1024 * 1024,
            },
            rotate_after: self.duration(
                "audit.rotate_after",
                au.rotate_after.as_deref(),
                Duration::from_secs(24 * 3600),
            )?,
            checkpoint_every: match au.checkpoint_every {
                Some(0) => return Err(self.err("audit.checkpoint_every", "must be positive")),
                Some(n) => n,
                None => 1000,
            },
            checkpoint_interval: self.duration(
                "audit.checkpoint_interval",
                au.checkpoint_interval.as_deref(),
                Duration::from_secs(60),
            )?,
        };

        // Slack.
        let slack = match &raw.slack {
            None => None,
            Some(sl) => {
                let mode = match sl.mode.as_deref() {
                    None | Some("http") => SlackMode::Http,
                    Some("socket") => SlackMode::Socket,
                    Some(o) => return Err(self.err("slack.mode", format!("{o:?} is not \"http\" or \"socket\""))),
                };
                let bot_token = self
                    .secret("slack.bot_token", sl.bot_token_env.as_ref(), sl.bot_token_file.as_ref())?
                    .ok_or_else(|| self.err("slack.bot_token_env", "is required in [slack]"))?;
                let signing_secret = self.secret(
                    "slack.signing_secret",
                    sl.signing_secret_env.as_ref(),
                    sl.signing_secret_file.as_ref(),
                )?;
                if mode == SlackMode::Http && signing_secret.is_none() {
                    return Err(self.err("slack.signing_secret_env", "is required with mode \"http\""));
                }
                let app_token =
                    self.secret("slack.app_token", sl.app_token_env.as_ref(), sl.app_token_file.as_ref())?;
                if mode == SlackMode::Socket && app_token.is_none() {
                    return Err(self.err("slack.app_token_env", "is required with mode \"socket\""));
                }
                let api_base = sl
                    .api_base
                    .clone()
                    .unwrap_or_else(|| "https://slack.com/api".to_string())
                    .trim_end_matches('/')
                    .to_string();
                if !(api_base.starts_with("http://") || api_base.starts_with("https://")) {
                    return Err(self.err("slack.api_base", "must be an http:// or https:// URL"));
                }
                let post_interval =
                    self.duration("slack.post_interval", sl.post_interval.as_deref(), Duration::from_secs(1))?;
                if post_interval > Duration::from_secs(60) {
                    return Err(self.err("slack.post_interval", "must be at most 60s"));
                }
                Some(SlackConfig { bot_token, signing_secret, api_base, mode, app_token, post_interval })
            }
        };

        // MCP servers.
        let mut mcp_servers = Vec::new();
        let mut mnames = BTreeSet::new();
        for (i, m) in raw.mcp_server.iter().enumerate() {
            let k = |f: &str| format!("mcp_server[{i}].{f}");
            if !valid_name(&m.name) {
                return Err(self.err(k("name"), format!("{:?} is not a valid name", m.name)));
            }
            if !mnames.insert(m.name.clone()) {
                return Err(self.err(k("name"), format!("{:?} is used twice", m.name)));
            }
            let transport = match (&m.url, &m.command) {
                (Some(u), None) => {
                    let url: Uri = u.parse().map_err(|e| self.err(k("url"), format!("not a URL: {e}")))?;
                    if !matches!(url.scheme_str(), Some("http" | "https")) {
                        return Err(self.err(k("url"), "must be an http:// or https:// URL"));
                    }
                    if points_at(u, &url, control_listen, &raw.server.control_listen) {
                        return Err(self.err(k("url"), "points at server.control_listen"));
                    }
                    McpTransport::Http { url }
                }
                (None, Some(c)) if !c.is_empty() => McpTransport::Stdio { command: c.clone() },
                _ => return Err(self.err(k("url"), "set exactly one of url and command (non-empty)")),
            };
            let inject_header = match &m.inject_header {
                Some(h) => Some(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| self.err(k("inject_header"), "not a header name"))?,
                ),
                None => None,
            };
            mcp_servers.push(McpServerConfig {
                name: m.name.clone(),
                transport,
                env: m
                    .env
                    .iter()
                    .map(|(child, ours)| {
                        (child.clone(), SecretRef::Env { key: k(&format!("env.{child}")), var: ours.clone() })
                    })
                    .collect(),
                inject_header,
                inject_value: self.secret(
                    &k("inject_value"),
                    m.inject_value_env.as_ref(),
                    m.inject_value_file.as_ref(),
                )?,
            });
        }

        Ok(Config {
            file: self.file.to_path_buf(),
            server: ServerConfig {
                listen,
                control_listen,
                public_url,
                max_body_bytes,
                hold_timeout,
                grant_ttl,
                reject_memory,
                shutdown_grace,
                worker_threads,
                metrics_token,
                header_read_timeout,
                body_read_timeout,
                decided_retention,
                default_expires_after,
            },
            upstreams,
            agents,
            approvers,
            routes,
            policy,
            store,
            audit,
            slack,
            mcp_servers,
        })
    }
}

/// Parses "55s", "15m", "1h 30m", "250ms".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration such as \"15m\": {e}"))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with('.')
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

fn url_has_password(u: &str) -> bool {
    let Some(rest) = u.split_once("://").map(|(_, r)| r) else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.contains(':') || !userinfo.is_empty(),
        None => false,
    }
}

/// The address `url`'s host names without a DNS lookup, normalised the way the
/// connection's resolver reads it: the WHATWG host parser turns `127.1`,
/// `2130706433`, `0x7f000001` and `0177.0.0.1` into `127.0.0.1` (as `inet_aton`
/// does), an IPv4-mapped IPv6 address becomes its IPv4 address, and `localhost`
/// (also `x.localhost` and with a final dot) is loopback. `None` for other names.
fn host_ip(text: &str, url: &Uri) -> Option<IpAddr> {
    let localhost = |d: &str| {
        let d = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
        d == "localhost" || d.ends_with(".localhost")
    };
    let loopback = IpAddr::from([127, 0, 0, 1]);
    match url::Url::parse(text.trim()) {
        Ok(u) => match u.host()? {
            url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
            url::Host::Ipv6(a) => Some(IpAddr::V6(a).to_canonical()),
            url::Host::Domain(d) => localhost(d).then_some(loopback),
        },
        // Not a WHATWG URL (e.g. an address with a zone id): the host as `http` reads it.
        Err(_) => {
            let host = url.host()?.trim_start_matches('[').trim_end_matches(']');
            let host = host.split('%').next().unwrap_or(host);
            if localhost(host) {
                return Some(loopback);
            }
            host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
        }
    }
}

/// Whether `url` (its text and its parsed form) would connect to `addr`: the same
/// port, and the same address, or a loopback address when `addr` is loopback, or
/// any address when either side is unspecified (`0.0.0.0`, `::`).
/// `listener` is the listener as the config wrote it: an upstream that names the
/// same host name (case and a trailing dot aside) points at it too.
fn points_at(text: &str, url: &Uri, addr: SocketAddr, listener: &str) -> bool {
    let port = url.port_u16().unwrap_or(if url.scheme_str() == Some("https") { 443 } else { 80 });
    if port != addr.port() {
        return false;
    }
    let at = addr.ip().to_canonical();
    match host_ip(text, url) {
        Some(ip) => ip == at || at.is_unspecified() || ip.is_unspecified() || (ip.is_loopback() && at.is_loopback()),
        None => {
            let name = |h: &str| h.trim_end_matches('.').to_ascii_lowercase();
            let listener_host = listener.rsplit_once(':').map_or(listener, |(h, _)| h);
            url.host().is_some_and(|h| !h.is_empty() && name(h) == name(listener_host))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/ap/config.toml"), s)
    }

    const MIN: &str = r#"
[server]
listen = "127.0.0.1:8080"
control_listen = "127.0.0.1:9090"
[[upstream]]
name = "stripe"
url = "https://api.stripe.com"
[policy]
rules = "rules"
"#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.server.hold_timeout, Duration::from_secs(55));
        assert_eq!(c.server.max_body_bytes, 1 << 20);
        assert_eq!(c.policy.rules, PathBuf::from("/etc/ap/rules"));
        assert_eq!(c.server.public_url, "http://127.0.0.1:9090");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = parse(&MIN.replace("[policy]", "[policy]\nrulez = 1")).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/etc/ap/config.toml: policy"), "{s}");
        assert!(s.contains("rulez"), "{s}");
    }

    /// Every `[store]` key is optional (INTERFACE.md §2): Redis defaults to the local
    /// server, and a missing HMAC key is a warning, not a refusal.
    #[test]
    fn short_tokens_are_warned_about_by_key_never_by_value() {
        let text = MIN.to_string()
            + "[[agent]]\nid = \"a\"\ntoken_env = \"A\"\n[[approver]]\nid = \"alice\"\ntoken_env = \"B\"\n";
        let c = parse(&text).unwrap();
        let env = MapEnv::default().with("A", "short-1").with("B", "a-long-random-approver-token");
        let (secrets, _) = c.resolve_secrets(&env).unwrap();
        let w = c.secret_warnings(&secrets);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("agent[0].token_env") && !w[0].contains("short-1"), "{w:?}");
    }

    #[test]
    fn a_redis_store_needs_no_url_and_no_key() {
        let c = parse(&(MIN.to_string() + "[store]\nbackend = \"redis\"\n")).unwrap();
        assert_eq!(c.store.redis_url.as_deref(), Some(DEFAULT_REDIS_URL));
        let w = c.warnings();
        assert!(w.len() == 1 && w[0].contains("store.hmac_key_env"), "{w:?}");
        let c = parse(&(MIN.to_string() + "[store]\nbackend = \"redis\"\nhmac_key_env = \"K\"\n")).unwrap();
        assert!(c.warnings().is_empty());
        assert!(parse(MIN).unwrap().warnings().is_empty(), "the memory store needs no key");
    }

    #[test]
    fn refusals_of_the_contract() {
        let cases = [
            (MIN.replace("https://api.stripe.com", "http://127.0.0.1:9090"), "upstream[0].url"),
            (MIN.replace("https://api.stripe.com", "http://localhost:9090/x"), "upstream[0].url"),
            (MIN.to_string() + "[store]\nredis_url = \"redis://:hunter2@127.0.0.1:6379/0\"\n", "store.redis_url"),
            (
                MIN.to_string() + "[store]\nredis_url = \"redis://127.0.0.1:6379/0\"\nca_file = \"ca.pem\"\n",
                "store.ca_file",
            ),
            (MIN.to_string() + "[store]\nredis_url = \"http://127.0.0.1:6379\"\n", "store.redis_url"),
            (MIN.replace("127.0.0.1:8080", "0.0.0.0:8080"), "server.listen"),
            (MIN.replace("\"stripe\"", "\"v1\""), "upstream[0].name"),
            (MIN.replace("\"stripe\"", "\"mcp\""), "upstream[0].name"),
            (MIN.to_string() + "[server2]\n", "server2"),
            (
                MIN.to_string() + "[[agent]]\nid=\"a\"\ntoken_env=\"T\"\n[[approver]]\nid=\"p\"\ntoken_env=\"T\"\n",
                "approver[0].token_env",
            ),
            (MIN.replace("[server]", "[server]\nhold_timeout = \"soon\""), "server.hold_timeout"),
            (MIN.to_string() + "[routes.r]\napprovers=[\"ghost\"]\n", "routes.r.approvers"),
            (MIN.to_string() + "[routes.r]\nescalate_to=\"nowhere\"\n", "routes.r.escalate_to"),
            (MIN.to_string() + "[routes.r]\nslack_channel=\"C1\"\n", "routes.r.slack_channel"),
            (
                MIN.to_string() + "[slack]\nbot_token_env=\"B\"\nsigning_secret_env=\"S\"\npost_interval=\"2m\"\n",
                "slack.post_interval",
            ),
        ];
        for (text, key) in cases {
            let e = parse(&text).expect_err(key);
            assert_eq!(e.key, key, "{e}");
            assert_eq!(e.file, PathBuf::from("/etc/ap/config.toml"));
        }
    }

    #[test]
    fn upstreams_that_reach_control_listen_in_any_spelling_are_refused() {
        let at = |control: &str, url: &str| {
            MIN.replace("127.0.0.1:9090", control)
                .replace("https://api.stripe.com", url)
                .replace("[policy]", "[[mcp_server]]\nname = \"m\"\nurl = \"https://mcp.example.com\"\n[policy]")
        };
        for (control, url) in [
            ("127.0.0.1:9090", "http://127.1:9090"),
            ("127.0.0.1:9090", "http://[::ffff:127.0.0.1]:9090"),
            ("127.0.0.1:9090", "http://[::ffff:7f00:1]:9090/x"),
            ("127.0.0.1:9090", "http://2130706433:9090"),
            ("127.0.0.1:9090", "http://0x7f000001:9090"),
            ("127.0.0.1:9090", "http://0177.0.0.1:9090"),
            ("127.0.0.1:9090", "http://127.0.0.1.:9090"),
            ("127.0.0.1:9090", "http://LOCALHOST:9090"),
            ("127.0.0.1:9090", "http://localhost.:9090"),
            ("127.0.0.1:9090", "http://api.localhost:9090"),
            ("127.0.0.1:9090", "http://127.0.0.2:9090"),
            ("127.0.0.1:9090", "http://[::1]:9090"),
            ("127.0.0.1:80", "http://127.1"),
            ("127.0.0.1:443", "https://0x7f.1"),
            ("[::1]:9090", "http://127.1:9090"),
            ("[::ffff:127.0.0.1]:9090", "http://127.0.0.1:9090"),
            ("0.0.0.0:9090", "http://[::ffff:127.0.0.1]:9090"),
            ("0.0.0.0:9090", "http://10.1.2.3:9090"),
            ("[::]:9090", "http://2130706433:9090"),
            ("10.1.2.3:9090", "http://0.0.0.0:9090"),
            ("10.1.2.3:9090", "http://167838211:9090"),
        ] {
            let e = parse(&at(control, url)).expect_err(url);
            assert_eq!(e.key, "upstream[0].url", "{control} {url}: {e}");
            // The same check for an MCP server's URL.
            let text = at(control, "https://api.stripe.com").replace("https://mcp.example.com", url);
            let e = parse(&text).expect_err(url);
            assert_eq!(e.key, "mcp_server[0].url", "{control} {url}: {e}");
        }
        // Other ports and other hosts pass.
        for (control, url) in [
            ("127.0.0.1:9090", "http://127.1:9091"),
            ("127.0.0.1:9090", "http://2130706433"),
            ("127.0.0.1:9090", "http://[::ffff:10.0.0.1]:9090"),
            ("127.0.0.1:9090", "http://10.1.2.3:9090"),
            ("127.0.0.1:9090", "http://example.com:9090"),
            ("10.1.2.3:9090", "http://127.0.0.1:9090"),
        ] {
            parse(&at(control, url)).unwrap_or_else(|e| panic!("{control} {url}: {e}"));
        }
    }

    #[test]
    fn listen_may_be_a_host_name() {
        let c = parse(&MIN.replace("127.0.0.1:8080", "localhost:8080")).unwrap();
        assert!(c.server.listen.ip().is_loopback(), "{}", c.server.listen);
        assert_eq!(c.server.listen.port(), 8080);
        let c = parse(&MIN.replace("127.0.0.1:9090", "localhost:9090")).unwrap();
        assert!(c.server.control_listen.ip().is_loopback());
        assert_eq!(c.server.public_url, format!("http://{}", c.server.control_listen));
        for bad in ["localhost", "localhost:", "localhost:99999", ":8080", "localhost:80x"] {
            let e = parse(&MIN.replace("127.0.0.1:8080", bad)).expect_err(bad);
            assert_eq!(e.key, "server.listen", "{e}");
        }
        // A name is held to the same rules as the address it resolves to.
        let e = parse(&MIN.replace("127.0.0.1:9090", "localhost:8080")).unwrap_err();
        assert_eq!(e.key, "server.control_listen", "{e}");
        let text =
            MIN.replace("127.0.0.1:9090", "localhost:9090").replace("https://api.stripe.com", "http://127.1:9090");
        assert_eq!(parse(&text).unwrap_err().key, "upstream[0].url");
        // The listener's own host name, in another case and with a trailing dot.
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
        let listener = format!("{host}:9090");
        if !host.is_empty() && std::net::ToSocketAddrs::to_socket_addrs(&listener).is_ok() {
            let text = MIN
                .replace("127.0.0.1:9090", &listener)
                .replace("https://api.stripe.com", &format!("http://{}.:9090", host.to_uppercase()));
            assert_eq!(parse(&text).unwrap_err().key, "upstream[0].url", "{host}");
        }
    }

    #[test]
    fn audit_directories_must_be_directories() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(dir.path().join("plain"), "x").unwrap();
        let check = |audit: &str| {
            Config::parse(&file, &(MIN.to_string() + audit)).unwrap().check_files().map_err(|e| (e.key.clone(), e))
        };
        let (key, e) = check("[audit]\npath = \"plain\"\n").unwrap_err();
        assert_eq!(key, "audit.path");
        assert_eq!(e.file, file);
        assert!(e.message.contains("is not a directory"), "{e}");
        let (key, _) = check("[audit]\npath = \"plain/audit\"\n").unwrap_err();
        assert_eq!(key, "audit.path");
        let (key, _) = check("[audit]\ncheckpoint_copy = \"plain\"\n").unwrap_err();
        assert_eq!(key, "audit.checkpoint_copy");
        check("[audit]\npath = \"not/yet/there\"\ncheckpoint_copy = \"https://worm.example.com/x\"\n").unwrap();
    }

    #[test]
    fn shared_token_value_is_refused_when_resolving() {
        let text =
            MIN.to_string() + "[[agent]]\nid=\"a\"\ntoken_env=\"AT\"\n[[approver]]\nid=\"p\"\ntoken_env=\"PT\"\n";
        let c = parse(&text).unwrap();
        let env = MapEnv::default().with("AT", "same").with("PT", "same");
        let e = c.resolve_secrets(&env).unwrap_err();
        assert_eq!(e.key, "approver[0].token_env");
        let env = MapEnv::default().with("AT", "one");
        let (s, missing) = c.resolve_secrets(&env).unwrap();
        assert_eq!(s.get(&c.agents[0].token).unwrap().expose(), "one");
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].key, "approver[0].token_env");
    }

    #[test]
    fn secrets_never_print() {
        assert_eq!(format!("{:?}", Secret::new("sk_live_x")), "Secret(<redacted>)");
    }

    #[test]
    fn password_detection() {
        assert!(url_has_password("redis://:pw@h:1/0"));
        assert!(url_has_password("redis://user:pw@h:1/0"));
        assert!(!url_has_password("redis://h:1/0"));
        assert!(!url_has_password("redis://h:1/0?x=a@b"));
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let c = Config::load(&path).unwrap();
        assert!(!c.upstreams.is_empty());
        assert!(c.routes.contains_key("finance-oncall"));
        let slack = c.slack.as_ref().expect("the example configures [slack]");
        assert_eq!((slack.mode, slack.post_interval), (SlackMode::Http, Duration::from_secs(1)));
        assert_eq!(c.routes["finance-oncall"].slack_usergroup.as_deref(), Some("S0FINANCE"));
    }
}

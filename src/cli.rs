//! The command line (INTERFACE.md §1). The only place that reads the process
//! environment, installs signal handlers and turns errors into exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::app::{App, AppError};
use crate::clock::SystemClock;
use crate::config::{Config, ProcessEnv, Secrets, EXIT_BAD_CONFIG};
use crate::policy::PolicyBundle;

#[derive(Debug, Parser)]
#[command(name = "approvalplane", version, about = "Human-in-the-loop control plane for AI agents")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (both listeners).
    Serve {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Rule commands.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Audit log commands.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The stdio MCP server, a front end of the running `serve`.
    Mcp {
        #[arg(long)]
        config: PathBuf,
        /// The `[[agent]]` whose token the calls carry (default: the only agent).
        #[arg(long)]
        agent: Option<String>,
    },
    /// Start the proxy with a built-in echo upstream and print the steps to try.
    Demo {
        /// Where the demo writes its config, rules and audit log.
        #[arg(long, default_value = "var/demo")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        control_listen: std::net::SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate config and rules without serving.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Run every test_* rule.
    Test {
        dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show why a request gets its decision.
    Explain {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        request: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write a new ed25519 pair: DIR/audit.key (mode 0600) and DIR/audit.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a chain file or a directory of chains.
    Verify {
        path: PathBuf,
        /// Verify checkpoint signatures with this public key.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Check the log against the checkpoint copies in this directory.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
    /// The evidence export, on stdout.
    Export {
        path: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Only actions requested at or after this time: RFC 3339 with any offset
        /// (2026-11-24T01:00:00Z, 2026-11-24T02:00:00.5+01:00), or a date
        /// (2026-11-24: midnight UTC).
        #[arg(long)]
        from: Option<String>,
        /// Only actions requested before this time (the same forms as --from).
        #[arg(long)]
        to: Option<String>,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("APPROVALPLANE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

/// Loads config or exits 64 naming the key and the file.
fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => serve(&config, log_format),
        Command::Config { command: ConfigCommand::Check { config } } => config_check(&config),
        Command::Rules { command: RulesCommand::Test { dir, config } } => rules_test(dir, config),
        Command::Rules { command: RulesCommand::Explain { config, request } } => crate::explain::run(&config, &request),
        Command::Audit { command: AuditCommand::Verify { path, key, checkpoints } } => {
            audit_verify(&path, key.as_deref(), checkpoints.as_deref())
        }
        Command::Audit { command: AuditCommand::Keygen { out } } => match crate::audit::writer::keygen(&out) {
            Ok((k, p, id)) => {
                println!("wrote {} (keep it secret) and {} (key id {id})", k.display(), p.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Audit { command: AuditCommand::Export { path, format, from, to } } => {
            audit_export(&path, format, from.as_deref(), to.as_deref())
        }
        Command::Mcp { config, agent } => mcp_stdio(&config, agent.as_deref()),
        Command::Demo { dir, listen, control_listen } => demo(&dir, listen, control_listen),
    }
}

/// `approvalplane mcp`: stdio MCP server calling the running `serve`.
fn mcp_stdio(path: &Path, agent: Option<&str>) -> ExitCode {
    init_logs(LogFormat::Text);
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let bad = |msg: String| {
        eprintln!("error: {}: {msg}", cfg.file.display());
        ExitCode::from(EXIT_BAD_CONFIG)
    };
    let token = match (agent, cfg.agents.as_slice()) {
        (None, []) => None,
        (None, [only]) => Some(only),
        (None, _) => return bad("agent: several [[agent]]s are configured; choose one with --agent ID".into()),
        (Some(id), agents) => match agents.iter().find(|a| a.id == id) {
            Some(a) => Some(a),
            None => return bad(format!("agent: no [[agent]] has id {id:?}")),
        },
    };
    let token = match token {
        None => None,
        Some(a) => match a.token.resolve(&ProcessEnv) {
            Ok(Some(t)) => Some(t),
            Ok(None) => return bad(format!("{}: {} is not set", a.token.key(), a.token.describe())),
            Err(e) => return bad(format!("{}: {e}", a.token.key())),
        },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(async {
        let backend = crate::mcp::stdio::HttpApprovals::new(cfg.server.listen, token, cfg.server.hold_timeout);
        let server = crate::mcp::tools::ApprovalServer::new(Arc::new(backend));
        let r =
            crate::mcp::stdio::serve(server, tokio::io::stdin(), tokio::io::stdout(), cfg.server.max_body_bytes).await;
        // Let withdrawals of cancelled calls reach `serve`.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        r
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: stdio: {e}");
            ExitCode::from(1)
        }
    }
}

fn config_check(path: &Path) -> ExitCode {
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = cfg.check_files_with(false) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    let secrets = match cfg.resolve_secrets_with(&ProcessEnv, true) {
        Ok((secrets, missing)) => {
            for m in missing {
                eprintln!("warning: {m} (serve needs it)");
            }
            for w in cfg.warnings().into_iter().chain(cfg.secret_warnings(&secrets)) {
                eprintln!("warning: {w}");
            }
            secrets
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let policy = match crate::app::load_policy(&cfg) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Err(e) = serve_checks(&cfg, &secrets, policy.clone()) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    println!("config ok: {} ({} rule files, bundle {})", cfg.file.display(), policy.files().len(), policy.hash());
    ExitCode::SUCCESS
}

/// What `serve` refuses at start beyond the config file itself, through the same
/// functions it builds with, on the secrets that are set (an unset one is only a
/// warning here): the audit signing key, the upstreams (their `ca_file`s) and MCP
/// servers, and the webhook and ntfy URLs.
fn serve_checks(cfg: &Config, secrets: &Secrets, policy: Arc<PolicyBundle>) -> Result<(), AppError> {
    // The signing key is a secret file: one this user cannot read (a CI runner
    // without the key's owner) is a warning, like an unset variable; one that
    // reads but is not a key is an error.
    let key_readable = match &cfg.audit.signing_key_file {
        Some(p) => match std::fs::File::open(p) {
            Ok(_) => true,
            Err(e) => {
                eprintln!(
                    "warning: {}: audit.signing_key_file: cannot read {}: {e} (serve needs it)",
                    cfg.file.display(),
                    p.display()
                );
                false
            }
        },
        None => true,
    };
    if key_readable {
        crate::app::writer_options(cfg, "config-check")?;
    }
    crate::app::build_live(cfg, secrets, policy)?;
    crate::notify::check_urls(cfg, secrets).map_err(|e| {
        let (key, message) = match e {
            crate::notify::NotifyError::BadUrl { key, message } => (key, message),
            other @ crate::notify::NotifyError::Tls(_) => ("routes".to_string(), other.to_string()),
        };
        AppError::Config { file: cfg.file.display().to_string(), key, message }
    })
}

fn rules_test(dir: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    let cfg = match &config {
        Some(p) => match load_config(p) {
            Ok(c) => Some(c),
            Err(_) => return ExitCode::from(2),
        },
        None => None,
    };
    let dir = dir.or_else(|| cfg.as_ref().map(|c| c.policy.rules.clone())).unwrap_or_else(|| PathBuf::from("rules"));
    let data = cfg.as_ref().and_then(|c| c.policy.data.clone()).or_else(|| {
        let d = dir.join("data.json");
        d.is_file().then_some(d)
    });
    match crate::policy::testing::run(&dir, data.as_deref()) {
        Ok(results) => {
            let (mut passed, mut failed) = (0, 0);
            for r in &results {
                if r.passed {
                    passed += 1;
                    println!("PASS {} ({:.1?})", r.name, r.elapsed);
                } else {
                    failed += 1;
                    println!("FAIL {}: {}", r.name, one_line(r.detail.as_deref().unwrap_or("failed")));
                }
            }
            println!("{passed} passed, {failed} failed");
            if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            println!("0 passed, 0 failed");
            ExitCode::from(2)
        }
    }
}

/// A test's failure on one line (the contract: one line per test). regorus reports
/// an evaluation error over several lines (`--> file:line:col`, the source line
/// with a caret, `error: message`); this keeps the last message and where it is.
fn one_line(detail: &str) -> String {
    let lines: Vec<&str> = detail.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.len() <= 1 {
        return lines.first().map_or_else(|| "failed".to_string(), |l| l.to_string());
    }
    let message = lines.iter().rev().find_map(|l| l.strip_prefix("error:").map(str::trim).filter(|m| !m.is_empty()));
    let at = lines.iter().rev().find_map(|l| l.strip_prefix("-->").map(str::trim).filter(|a| !a.is_empty()));
    match (message, at) {
        (Some(m), Some(at)) => format!("error: {m} (at {at})"),
        (Some(m), None) => format!("error: {m}"),
        // Not regorus's layout: every line but the source excerpts (`  |`, `5 | …`).
        _ => lines
            .iter()
            .filter(|l| !l.split_once('|').is_some_and(|(g, _)| g.trim().bytes().all(|b| b.is_ascii_digit())))
            .copied()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn audit_verify(path: &Path, key: Option<&Path>, checkpoints: Option<&Path>) -> ExitCode {
    let key = match key.map(crate::audit::writer::read_verifying_key).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(d) = checkpoints {
        if !d.is_dir() {
            eprintln!("error: --checkpoints {} is not a directory", d.display());
            return ExitCode::from(2);
        }
    }
    let signed = key.is_some();
    let anchors = crate::audit::Anchors { key, copies: checkpoints.map(Path::to_path_buf) };
    match crate::audit::verify::verify_path(path, &anchors) {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Ok(report) => {
            if !signed && report.chains.iter().any(|c| c.checkpoints > 0) {
                eprintln!("warning: checkpoint signatures were not verified: pass --key audit.pub");
            }
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            for f in &report.findings {
                println!("TAMPERED {f}");
            }
            let line = |c: &crate::audit::verify::ChainReport| {
                format!(
                    "verified {} records through seq {}, {}",
                    c.records,
                    c.last_seq.map_or("-".to_string(), |s| s.to_string()),
                    c.anchored_through.map_or("not anchored by a checkpoint".to_string(), |a| format!(
                        "anchored through checkpoint {a}"
                    ))
                )
            };
            if report.chains.len() > 1 {
                for c in &report.chains {
                    println!("chain {} ({} files): {}", c.chain, c.files, line(c));
                }
            }
            if !report.intact() {
                println!("FAILED: {} finding(s)", report.findings.len());
                return ExitCode::from(1);
            }
            match report.chains.as_slice() {
                [one] => println!("{}", line(one)),
                many => println!("verified {} records in {} chains", report.records, many.len()),
            }
            ExitCode::SUCCESS
        }
    }
}

fn audit_export(path: &Path, format: ExportFormat, from: Option<&str>, to: Option<&str>) -> ExitCode {
    use crate::clock::Timestamp;
    let parse = |s: Option<&str>, flag: &str| -> Result<Option<Timestamp>, String> {
        s.map(|t| Timestamp::parse(t).map_err(|e| format!("{flag}: {e}"))).transpose()
    };
    let (from, to) = match (parse(from, "--from"), parse(to, "--to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match crate::audit::export::collect(path, from, to) {
        Ok((rows, trailer)) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let csv = matches!(format, ExportFormat::Csv);
            match crate::audit::export::write(&mut out, &rows, &trailer, csv).and_then(|_| {
                use std::io::Write;
                out.flush()
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn serve(path: &Path, log_format: LogFormat) -> ExitCode {
    init_logs(log_format);
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for w in cfg.warnings() {
        tracing::warn!(warning = %w, "config");
    }
    let secrets = match cfg.resolve_secrets(&ProcessEnv) {
        Ok((s, missing)) => {
            let required: Vec<_> = missing.iter().filter(|m| m.required).collect();
            if !required.is_empty() {
                for m in required {
                    eprintln!("error: {}: {m}", cfg.file.display());
                }
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            s
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    for w in cfg.secret_warnings(&secrets) {
        tracing::warn!(warning = %w, "config");
    }
    run_server(cfg, secrets, None)
}

fn demo(dir: &Path, listen: std::net::SocketAddr, control: std::net::SocketAddr) -> ExitCode {
    init_logs(LogFormat::Text);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let prepared: anyhow::Result<Config> = rt.block_on(async {
        let echo = crate::demo::echo_upstream().await.context("starting the echo upstream")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = crate::demo::write_demo(dir, listen, control, echo).context("writing the demo config")?;
        Ok(Config::load(&path)?)
    });
    let cfg = match prepared {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let secrets = match cfg.resolve_secrets(&crate::demo::demo_env()) {
        Ok((s, _)) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let banner = crate::demo::steps(&cfg);
    // The echo upstream lives on `rt`; keep it running beside the server.
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    run_server(cfg, secrets, Some(banner))
}

/// Runs the server on its own runtime until SIGTERM/SIGINT.
fn run_server(cfg: Config, secrets: crate::config::Secrets, banner: Option<String>) -> ExitCode {
    // Every runtime is a current-thread one: no work-stealing queues and no
    // wake-ups between threads on a request's path. With one worker the whole
    // service runs on the main thread; with more, the main thread keeps the control
    // listener and the background work, and each worker thread runs its own share
    // of the agent connections (handed over at accept).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = if cfg.server.worker_threads == 0 { cores } else { cfg.server.worker_threads };
    let agent_workers = if workers > 1 {
        match AgentWorkers::start(workers) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("error: cannot start the worker runtimes: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let handles = agent_workers.as_ref().map(AgentWorkers::handles).unwrap_or_default();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res: anyhow::Result<ExitCode> = rt.block_on(async move {
        let replica = format!("{}:{}", hostname(), std::process::id());
        let app = match App::build(cfg.clone(), secrets, Arc::new(SystemClock), &replica).await {
            Ok(a) => a,
            Err(e @ (AppError::Policy { .. } | AppError::Config { .. } | AppError::Upstream { .. })) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(EXIT_BAD_CONFIG));
            }
            // The chain cannot be started in the configured directory (not creatable,
            // not writable): a deployment error, named like every config error.
            Err(AppError::Audit(e)) => {
                eprintln!("error: {}: audit.path: {} ({e})", cfg.file.display(), cfg.audit.path.display());
                return Ok(ExitCode::from(EXIT_BAD_CONFIG));
            }
            Err(e) => return Err(e).context("starting"),
        };
        let agent = tokio::net::TcpListener::bind(cfg.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", cfg.server.listen))?;
        let control = tokio::net::TcpListener::bind(cfg.server.control_listen)
            .await
            .with_context(|| format!("binding server.control_listen {}", cfg.server.control_listen))?;
        tracing::info!(listen = %cfg.server.listen, control_listen = %cfg.server.control_listen, "listening");
        let reloader = app.reloader(Arc::new(ProcessEnv));
        tokio::spawn(sighup_loop(reloader.clone()));
        if !cfg.policy.watch_interval.is_zero() {
            tokio::spawn(crate::reload::watch_rules(reloader, cfg.policy.watch_interval));
        }
        if let Some(b) = banner {
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{b}");
            let _ = out.flush();
        }
        app.serve_on(agent, control, handles, shutdown_signal()).await.context("serving")?;
        Ok(ExitCode::SUCCESS)
    });
    if let Some(w) = agent_workers {
        w.stop();
    }
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The agent listener's worker threads, one current-thread runtime each.
struct AgentWorkers {
    threads: Vec<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl AgentWorkers {
    fn start(n: usize) -> std::io::Result<AgentWorkers> {
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let t = std::thread::Builder::new().name(format!("agent-worker-{i}")).spawn(move || {
                crate::upstream::use_pool_of_worker(i);
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
            threads.push((handle, stop, t));
        }
        Ok(AgentWorkers { threads })
    }

    fn handles(&self) -> Vec<tokio::runtime::Handle> {
        self.threads.iter().map(|(h, _, _)| h.clone()).collect()
    }

    /// After the server has drained: ends each worker's runtime.
    fn stop(self) {
        for (_, stop, t) in self.threads {
            let _ = stop.send(());
            let _ = t.join();
        }
    }
}

/// Reloads on every SIGHUP.
async fn sighup_loop(reloader: Arc<crate::reload::Reloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        let _ = reloader.reload("sighup").await;
    }
}

/// Resolves on SIGTERM or SIGINT with the signal's name.
async fn shutdown_signal() -> String {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT".into();
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM".into(),
        _ = tokio::signal::ctrl_c() => "SIGINT".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_evaluation_error_becomes_one_line() {
        let detail = "error: \n--> ./x_test.rego:5:10\n  |\n5 |   x := 1 / 0\n  |          ^\nerror: divide by zero";
        assert_eq!(one_line(detail), "error: divide by zero (at ./x_test.rego:5:10)");
        assert_eq!(one_line("undefined"), "undefined");
        assert_eq!(one_line(""), "failed");
        assert_eq!(one_line("first\n  |\n12 | src\nsecond"), "first second");
    }

    #[test]
    fn every_command_has_its_own_description() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let about = |name: &str| {
            cmd.find_subcommand(name).and_then(|c| c.get_about()).map(|a| a.to_string()).unwrap_or_default()
        };
        assert!(about("mcp").contains("stdio MCP server"), "{}", about("mcp"));
        assert!(about("demo").contains("echo upstream"), "{}", about("demo"));
        for c in cmd.get_subcommands() {
            assert!(c.get_about().is_some(), "{} has no description", c.get_name());
        }
    }
}

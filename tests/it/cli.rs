//! The CLI's exit codes and messages.

use crate::harness::*;

fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(
        &p,
        format!(
            "[server]\nlisten = \"127.0.0.1:18080\"\ncontrol_listen = \"127.0.0.1:19090\"\n[[upstream]]\nname = \"stripe\"\nurl = \"http://127.0.0.1:1\"\n[policy]\nrules = \"rules\"\n{extra}"
        ),
    )
    .unwrap();
    p
}

#[test]
fn config_check_accepts_good_config_and_refuses_bad_with_64() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(dir.path(), "");
    let (code, out, err) = run_bin(&["config", "check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let p = config(dir.path(), "[audit]\nfail_mode = \"sometimes\"\n");
    let (code, _, err) = run_bin(&["config", "check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("config.toml") && err.contains("audit.fail_mode"), "{err}");
    let (code, _, err) = run_bin(&["serve", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn invalid_rego_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(dir.path(), "");
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/bad.rego"),
        "package approvalplane\n\nallow contains x if {\n    input.a ==\n}\n",
    )
    .unwrap();
    let (code, _, err) = run_bin(&["config", "check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("bad.rego:"), "{err}");
    assert!(err.contains("policy.rules"), "{err}");
}

#[test]
fn serve_names_a_missing_secret() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(dir.path(), "[[agent]]\nid = \"a\"\ntoken_env = \"AP_TEST_SURELY_UNSET\"\n");
    let (code, _, err) = run_bin(&["serve", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(err.contains("AP_TEST_SURELY_UNSET") && err.contains("agent[0].token_env"), "{err}");
}

/// A secret file that is there but cannot be read: `config check` warns (it never
/// needs the secrets), `serve` refuses, naming the key.
#[test]
fn an_unreadable_secret_file_is_a_warning_for_config_check_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("token-dir")).unwrap();
    let p = config(dir.path(), "[[agent]]\nid = \"a\"\ntoken_file = \"token-dir\"\n");
    let (code, out, err) = run_bin(&["config", "check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("warning") && err.contains("agent[0].token_file") && err.contains("cannot read"), "{err}");
    let (code, _, err) = run_bin(&["serve", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("config.toml") && err.contains("agent[0].token_file"), "{err}");
}

#[test]
fn shipped_rules_pass_their_tests() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let (code, out, err) = run_bin(&["rules", "test", rules.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let last = out.lines().last().unwrap();
    assert!(last.ends_with(" 0 failed") && !last.starts_with("0 passed"), "{last}");
}

#[test]
fn rules_test_reports_failures_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("x.rego"),
        "package approvalplane\nallow contains {\"id\": \"a\", \"reason\": \"r\"} if input.ok\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("x_test.rego"),
        "package approvalplane_test\nimport data.approvalplane\ntest_ok if count(approvalplane.allow) == 1 with input as {\"ok\": true}\ntest_bad if count(approvalplane.allow) == 1 with input as {\"ok\": false}\n",
    )
    .unwrap();
    let (code, out, _) = run_bin(&["rules", "test", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PASS data.approvalplane_test.test_ok"), "{out}");
    assert!(out.contains("FAIL data.approvalplane_test.test_bad"), "{out}");
    assert_eq!(out.lines().last().unwrap(), "1 passed, 1 failed");
}

/// build.rs packs the binary's relative relocations on glibc Linux: a
/// position-independent binary that the loader need not read 1.2 MB of
/// relocations for at every start (idle RSS).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_binary_is_position_independent_with_packed_relocations() {
    let out = std::process::Command::new("readelf")
        .args(["--dynamic", "--wide"])
        .arg(bin())
        .output()
        .expect("readelf (binutils) runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(RELR)"), "no DT_RELR entry:\n{text}");
    assert!(text.contains("PIE"), "not position-independent:\n{text}");
}

/// Runs the binary with extra environment variables; kills it after 30 s (a
/// `serve` that should have refused to start).
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{args:?} still running after 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code().unwrap_or(-1), out, err)
}

#[test]
fn config_check_refuses_every_spelling_of_the_control_listener() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "http://127.1:19090",
        "http://[::ffff:127.0.0.1]:19090",
        "http://2130706433:19090",
        "http://0x7f000001:19090",
        "http://localhost:19090",
    ] {
        let text = std::fs::read_to_string(config(dir.path(), "")).unwrap().replace("http://127.0.0.1:1", url);
        let p = dir.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        let (code, _, err) = run_bin(&["config", "check", "--config", p.to_str().unwrap()]);
        assert_eq!(code, 64, "{url}: {err}");
        assert!(err.contains("config.toml") && err.contains("upstream[0].url"), "{url}: {err}");
        assert!(err.contains("control_listen"), "{url}: {err}");
    }
}

#[test]
fn config_check_refuses_what_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("garbage.key"), "not a key\n").unwrap();
    std::fs::write(dir.path().join("empty-ca.pem"), "no certificate here\n").unwrap();
    std::fs::write(dir.path().join("a-file"), "x").unwrap();
    let webhook = "[routes.r]\nwebhook_url_env = \"AP_TEST_HOOK_URL\"\nwebhook_secret_env = \"AP_TEST_HOOK_SECRET\"\n";
    let hook_env = [("AP_TEST_HOOK_URL", "not a url"), ("AP_TEST_HOOK_SECRET", "s3cret")];
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, &str, Env, &str); 5] = [
        ("a garbage signing key", "[audit]\nsigning_key_file = \"garbage.key\"\n", &[], "audit.signing_key_file"),
        ("a CA file without a certificate", "", &[], "ca_file"),
        ("a webhook URL that is not a URL", webhook, &hook_env, "routes.r.webhook_url_env"),
        ("audit.path a regular file", "[audit]\npath = \"a-file\"\n", &[], "audit.path"),
        ("audit.path under a regular file", "[audit]\npath = \"a-file/audit\"\n", &[], "audit.path"),
    ];
    for (name, extra, env, key) in cases {
        let p = config(dir.path(), extra);
        if name.starts_with("a CA file") {
            let text = std::fs::read_to_string(&p).unwrap();
            let text = text.replace(
                "url = \"http://127.0.0.1:1\"\n",
                "url = \"http://127.0.0.1:1\"\nca_file = \"empty-ca.pem\"\n",
            );
            std::fs::write(&p, text).unwrap();
        }
        let (code, out, err) = run_env(&["config", "check", "--config", p.to_str().unwrap()], env);
        assert_eq!(code, 64, "{name}: config check: {out}{err}");
        assert!(err.contains("config.toml") && err.contains(key), "{name}: config check: {err}");
        let (code, out, err) = run_env(&["serve", "--config", p.to_str().unwrap()], env);
        assert_eq!(code, 64, "{name}: serve: {out}{err}");
        assert!(err.contains("config.toml") && err.contains(key), "{name}: serve: {err}");
    }
    // A webhook URL variable that is not set is a warning, not an error.
    let p = config(dir.path(), webhook);
    let (code, out, err) = run_env(&["config", "check", "--config", p.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("warning") && err.contains("AP_TEST_HOOK_URL"), "{err}");
    // So is a signing key file that is not there (a CI runner without the key);
    // serve refuses it, naming the key and the file.
    let p = config(dir.path(), "[audit]\nsigning_key_file = \"keys/missing.key\"\n");
    let (code, out, err) = run_env(&["config", "check", "--config", p.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("warning") && err.contains("audit.signing_key_file"), "{err}");
    let (code, out, err) = run_env(&["serve", "--config", p.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{out}{err}");
    assert!(err.contains("config.toml") && err.contains("audit.signing_key_file"), "{err}");
}

#[test]
fn server_listen_may_be_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(dir.path(), "");
    let text = std::fs::read_to_string(&p).unwrap().replace("127.0.0.1:18080", "localhost:18080");
    std::fs::write(&p, text).unwrap();
    let (code, out, err) = run_bin(&["config", "check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn rules_test_prints_one_line_per_test_even_for_evaluation_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.rego"), "package approvalplane\nratio := 1 / input.d\n").unwrap();
    std::fs::write(
        dir.path().join("x_test.rego"),
        "package approvalplane_test\nimport data.approvalplane\n\
         test_ok if approvalplane.ratio == 0.5 with input as {\"d\": 2}\n\
         test_zero if approvalplane.ratio == 1 with input as {\"d\": 0}\n\
         test_inline if {\n    x := 1 / 0\n    x == 1\n}\n",
    )
    .unwrap();
    let (code, out, err) = run_bin(&["rules", "test", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "one line per test and the total:\n{out}");
    assert_eq!(lines[3], "1 passed, 2 failed");
    for (test, at) in [("test_zero", "x.rego:2:"), ("test_inline", "x_test.rego:6:")] {
        let line = lines.iter().find(|l| l.contains(test)).unwrap_or_else(|| panic!("{test}: {out}"));
        assert!(line.starts_with("FAIL ") && line.contains("divide by zero") && line.contains(at), "{line}");
    }
}

#[test]
fn help_describes_every_command() {
    let (code, out, _) = run_bin(&["--help"]);
    assert_eq!(code, 0);
    let line = |cmd: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{cmd} ")))
            .unwrap_or_else(|| panic!("{cmd} in:\n{out}"))
            .to_string()
    };
    assert!(line("mcp").contains("stdio MCP server"), "{out}");
    assert!(line("demo").contains("echo upstream"), "{out}");
    for cmd in ["serve", "config", "rules", "audit", "mcp", "demo"] {
        assert!(line(cmd).split_whitespace().count() > 1, "{cmd} has no description:\n{out}");
    }
}

/// An audit directory that cannot be created (here: under /proc, whatever the
/// user) is a configuration error too: exit 64 naming `audit.path` and the file.
#[cfg(target_os = "linux")]
#[test]
fn serve_names_an_audit_path_it_cannot_create() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(dir.path(), "[audit]\npath = \"/proc/approvalplane-audit\"\n");
    let (code, out, err) = run_env(&["serve", "--config", p.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{out}{err}");
    assert!(err.contains("config.toml") && err.contains("audit.path"), "{err}");
}

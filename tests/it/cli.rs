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

//! The `spore` binary as a newcomer runs it.

use std::process::Command;

fn spore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spore"))
}

#[test]
fn demo_delivers_everything_exactly_once_and_reports_json() {
    let out = spore()
        .args(["demo", "--transactions", "12", "--width", "1", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["sent"], 12);
    assert_eq!(v["delivered"], 12);
    assert_eq!(v["duplicates"], 0);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["signatures_valid"], 12);
    for q in ["p50", "p90", "p99"] {
        let ms = v["latency_ms"][q].as_f64().unwrap();
        assert!(ms > 0.0 && ms < 60_000.0, "{q} = {ms}");
    }
    // cover traffic flowed on A's link alongside the real packets
    let a = &v["links"][0];
    assert!(a["real"].as_u64().unwrap() >= 12);
    assert!(a["drop_cover"].as_u64().unwrap() > 0);
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "demo",
        "keygen",
        "directory",
        "inspect",
        "analyze",
        "testnet",
        "load",
        "bench",
    ] {
        let out = spore().args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help failed");
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn bad_input_is_one_clear_line() {
    let out = spore()
        .args(["directory", "show", "/nonexistent/dir.bin"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot read /nonexistent/dir.bin"));
}

/// `spore keygen authority` prints the public key once; `keygen show` prints it again, in
/// full, from the key file (what a relay's `authorities = [...]` needs).
#[test]
fn keygen_show_prints_the_full_authority_public_key_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("authority.key");
    let out = spore()
        .args(["keygen", "authority", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let first = String::from_utf8_lossy(&out.stdout).into_owned();
    let shown = spore()
        .args(["keygen", "show", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let public = String::from_utf8_lossy(&shown.stdout).trim().to_owned();
    assert_eq!(public.len(), 64, "{public}");
    assert!(public.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(
        first.contains(&public),
        "keygen printed {first}, show printed {public}"
    );

    let missing = spore()
        .args(["keygen", "show", "--key", "/nonexistent/authority.key"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/authority.key"));
}

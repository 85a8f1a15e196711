//! `spore authority run` as an operator starts it: a config file and a key file.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Sends a raw HTTP/1.0 request and returns the status code and body.
fn http(addr: &str, request: &[u8]) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Some((status, body))
}

#[test]
fn authority_run_serves_uploads_and_the_directory_from_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("authority.key");
    let keygen = Command::new(env!("CARGO_BIN_EXE_spore"))
        .args(["keygen", "authority", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("authority.toml");
    std::fs::write(
        &config,
        format!("listen = \"{addr}\"\nkey_file = \"authority.key\"\nthreshold = 1\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spore"))
        .args(["authority", "run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(answer) = http(&addr, b"GET /directory HTTP/1.0\r\n\r\n") {
            break answer;
        }
        assert!(Instant::now() < deadline, "the authority did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(first.0, 503, "no directory before the first round");
    let garbage = http(
        &addr,
        b"POST /descriptor HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
    )
    .unwrap();
    assert_eq!(garbage.0, 400);
    assert!(
        garbage.1.contains("not a relay descriptor"),
        "{}",
        garbage.1
    );
    child.kill().unwrap();
    let _ = child.wait();

    // A config naming a threshold no set of authorities can reach is refused, by name.
    std::fs::write(
        &config,
        format!("listen = \"{addr}\"\nkey_file = \"authority.key\"\nthreshold = 2\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spore"))
        .args(["authority", "run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("threshold"));
}

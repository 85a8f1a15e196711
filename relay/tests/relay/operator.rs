//! What an operator meets with the real binary: `status` and `/health` against a running
//! relay, the start-up line, plain (colourless) logs, and a busy metrics port named.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_spore-relay");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `spore-relay init --role edge` into `dir` with a free listen port and metrics port `metrics`;
/// `edit` changes the config text. Returns the config path.
fn init(dir: &Path, metrics: u16, edit: impl FnOnce(String) -> String) -> PathBuf {
    let listen = format!("127.0.0.1:{}", free_port());
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir)
        .args(["--role", "edge", "--listen", &listen])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("relay.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find("\nmetrics_listen = ")
        .expect("init writes metrics_listen");
    let end = start + 1 + text[start + 1..].find('\n').unwrap();
    let text = format!(
        "{}\nmetrics_listen = \"127.0.0.1:{metrics}\"{}",
        &text[..start],
        &text[end..]
    );
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// The relay process, with stderr captured to a file; killed on drop.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(config: &Path) -> Proc {
    let log = config.with_extension("log");
    let child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proc { child }
}

fn status(config: &Path, json: bool) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("status").arg("--config").arg(config);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

/// `status` once the relay answers (it starts within a few seconds).
fn status_when_up(config: &Path, json: bool) -> Output {
    for _ in 0..200 {
        let out = status(config, json);
        if !String::from_utf8_lossy(&out.stderr).contains("no answer") {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "relay did not come up: {}",
        String::from_utf8_lossy(&status(config, json).stderr)
    );
}

fn http_status(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let code = r.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, r)
}

#[test]
fn status_reports_a_healthy_relay_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let config = init(dir.path(), metrics, |t| t);
    let relay = run(&config);

    let out = status_when_up(&config, false);
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{screen}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        screen.contains(&format!(
            "spore-relay {}  healthy",
            env!("CARGO_PKG_VERSION")
        )),
        "{screen}"
    );
    for line in [
        "uptime",
        "roles           entry, mailbox",
        "public address",
        "directory       none",
        "valid until",
        "listed        no",
        "links",
        "queues",
        "mailboxes",
        "loop cover",
    ] {
        assert!(screen.contains(line), "missing {line:?} in\n{screen}");
    }

    let out = status(&config, true);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["healthy"], true);
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["listed"], false);

    let (code, body) = http_status(metrics, "/health");
    assert_eq!(code, 200, "{body}");
    let (code, text) = http_status(metrics, "/metrics");
    assert_eq!(code, 200);
    assert!(
        text.contains(&format!(
            "spore_relay_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    for name in [
        "spore_relay_uptime_seconds",
        "spore_relay_directory_valid_until_seconds",
        "spore_relay_directory_age_seconds",
        "spore_relay_listed",
        "spore_relay_descriptor_age_seconds",
    ] {
        assert!(text.contains(&format!("\n{name} ")), "{name} missing");
    }

    // The start-up line says where the relay listens and what it serves; logs carry no colour
    // codes when stderr is a file.
    drop(relay);
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap();
    assert!(!log.contains('\u{1b}'), "ANSI escape in a log file:\n{log}");
    let started = log
        .lines()
        .find(|l| l.contains("relay started"))
        .expect("start-up line");
    for field in [
        "listen=127.0.0.1:",
        "public_address=",
        &format!("metrics=127.0.0.1:{metrics}"),
        "directory=none",
        "listed=false",
        "roles=entry,mailbox",
        "version=",
    ] {
        assert!(started.contains(field), "{field:?} missing from {started}");
    }
}

#[test]
fn status_exits_non_zero_when_the_directory_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let config = init(dir.path(), metrics, |t| {
        t.replace("# path = \"directory.bin\"", "path = \"directory.bin\"")
            .replace("threshold = 1", "threshold = 0")
    });
    let _relay = run(&config);

    let out = status_when_up(&config, false);
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{screen}");
    assert!(screen.contains("UNHEALTHY"), "{screen}");
    assert!(
        screen.contains("problem: no verified directory from file "),
        "{screen}"
    );
    let (code, body) = http_status(metrics, "/health");
    assert_eq!(code, 503, "{body}");
}

#[test]
fn status_without_a_running_relay_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), free_port(), |t| t);
    let out = status(&config, false);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is the relay running?") && err.contains("metrics_listen"),
        "{err}"
    );
}

#[test]
fn a_second_relay_on_the_same_metrics_port_names_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let a = init(&dir.path().join("a"), metrics, |t| t);
    let b = init(&dir.path().join("b"), metrics, |t| t);
    let _first = run(&a);
    status_when_up(&a, false);
    let out = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&b)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{metrics} (metrics_listen)"
        )),
        "{err}"
    );
}

#[test]
fn init_picks_a_metrics_port_nothing_listens_on() {
    let dir = tempfile::tempdir().unwrap();
    // Whatever init picks first, hold it: a second init must pick another.
    let first = init_metrics_port(&dir.path().join("a"));
    let _held = TcpListener::bind(("127.0.0.1", first));
    let second = init_metrics_port(&dir.path().join("b"));
    assert_ne!(first, second);
}

fn init_metrics_port(dir: &Path) -> u16 {
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:7400"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(dir.join("relay.toml")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("metrics_listen = "))
        .unwrap();
    line.trim_end_matches('"')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn run_names_a_missing_key_file_and_how_to_create_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), free_port(), |t| t);
    std::fs::remove_file(dir.path().join("relay.key")).unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key_file ")
            && err.contains("does not exist; create it with `spore-relay keygen --key-file"),
        "{err}"
    );
    assert!(err.contains(&config.display().to_string()), "{err}");
}

#[test]
fn run_refuses_a_public_address_descriptor_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), free_port(), |t| {
        t.replace("# public_address = ", "public_address = \"no-port\"\n# ")
    });
    for command in ["run", "descriptor"] {
        let out = Command::new(BIN)
            .arg(command)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{}: public_address = \"no-port\": expected host:port",
                config.display()
            )),
            "{command}: {err}"
        );
        assert_eq!(err.matches("expected host:port").count(), 1, "{err}");
    }
}

#[test]
fn a_directory_missing_a_signature_names_the_authority_and_the_validity() {
    use ed25519_dalek::SigningKey;
    use spore_protocol::directory::{Directory, NetworkParams};

    let dir = tempfile::tempdir().unwrap();
    let signer = SigningKey::from_bytes(&[7; 32]);
    let absent = SigningKey::from_bytes(&[9; 32]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut doc = Directory {
        epoch: now / 3600,
        valid_after: now - 60,
        valid_until: now + 86_400,
        params: NetworkParams::default(),
        relays: vec![],
        signatures: vec![],
    };
    doc.sign(&signer).unwrap();
    std::fs::write(dir.path().join("directory.bin"), doc.to_bytes()).unwrap();
    let keys = [
        absent.verifying_key().to_bytes(),
        signer.verifying_key().to_bytes(),
    ];
    let absent_hex = hex::encode(keys[0]);
    let config = init(dir.path(), free_port(), |t| {
        t.replace("# path = \"directory.bin\"", "path = \"directory.bin\"")
            .replace("threshold = 1", "threshold = 2")
            .replace(
                "authorities = []",
                &format!(
                    "authorities = [\"{absent_hex}\", \"{}\"]",
                    hex::encode(keys[1])
                ),
            )
    });
    let _relay = run(&config);
    let out = status_when_up(&config, false);
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("directory source refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        line.contains("only 1 of the 2 required signatures"),
        "{line}"
    );
    assert!(!line.contains("peer misbehaved"), "{line}");
    assert!(
        line.contains(&format!(
            "no signature by directory.authorities[0] = {absent_hex}"
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "valid from {} to {}",
            spore_relay::UtcTime(now - 60),
            spore_relay::UtcTime(now + 86_400)
        )),
        "{line}"
    );
    assert_eq!(log.matches("directory source refused").count(), 1, "{log}");
}

//! The real `spore-relay` binary: init, run, SIGKILL, restart, SIGTERM.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spore_protocol::packet::RouteHop;
use spore_relay::{Link, RelayConfig, RelayKeys};

use crate::util::*;

const BIN: &str = env!("CARGO_BIN_EXE_spore-relay");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `spore-relay init` into `dir`, then make the config test-friendly (no fixed metrics port).
fn init(dir: &Path) -> String {
    let listen = format!("127.0.0.1:{}", free_port());
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir)
        .args(["--role", "both", "--layer", "1", "--listen", &listen])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("relay.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("metrics_listen = ", "# metrics_listen = ");
    std::fs::write(&path, text).unwrap();
    listen
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(dir: &Path) -> Proc {
    Proc(
        Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(dir.join("relay.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn connect(addr: &str, keys: &RelayKeys, secret: &[u8; 32]) -> Link {
    for _ in 0..200 {
        if let Ok(l) = Link::connect(addr, secret, Some(keys.link_public())).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("relay at {addr} did not come up");
}

fn hop(keys: &RelayKeys) -> RouteHop {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let epoch = now / spore_relay::MixConfig::default().epoch_length_secs;
    RouteHop {
        id: keys.relay_id(),
        sphinx_key: keys.sphinx_public(epoch),
    }
}

/// Pulls and deletes until the mailbox is empty; returns how many items there were.
async fn drain(link: &mut Link) -> usize {
    let mut n = 0;
    loop {
        let items = pull(link).await;
        if items.is_empty() {
            return n;
        }
        n += items.len();
        delete(link, items.iter().map(|i| i.handle).collect()).await;
    }
}

#[tokio::test]
async fn init_writes_private_keys_and_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let config = RelayConfig::load(&dir.path().join("relay.toml")).unwrap();
    assert!(config.roles.mix && config.roles.mailbox);
    assert!(config.key_file.starts_with(dir.path()));
    RelayKeys::load(&config.key_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config.key_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A second init refuses to overwrite.
    let again = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
}

#[tokio::test]
async fn relay_sigkilled_after_acking_keeps_every_acked_packet() {
    let dir = tempfile::tempdir().unwrap();
    let addr = init(dir.path());
    let keys = RelayKeys::load(&dir.path().join("relay.key")).unwrap();
    let recipient = mailbox_key();
    let sender = mailbox_key();
    let n = 40;

    let child = run(dir.path());
    let mut link = connect(&addr, &keys, &rand::random()).await;
    let h = hop(&keys);
    for _ in 0..n {
        let (p, _) = acked_packet(&[h], recipient.mailbox_id(), &[h], sender.mailbox_id());
        let p = p.into_boxed_slice().try_into().unwrap();
        link.writer
            .write_frame(&spore_protocol::link::Frame::Packet(p))
            .await
            .unwrap();
    }
    link.writer.flush().await.unwrap();

    // Wait for all N acks (each is released only after its packet is durable).
    let mut sender_link = connect(&addr, &keys, &sender.secret_bytes()).await;
    let mut acks = 0;
    for _ in 0..200 {
        acks += drain(&mut sender_link).await;
        if acks >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(acks, n);

    drop(child); // SIGKILL, no chance to flush anything
    let _child = run(dir.path());
    let mut recipient_link = connect(&addr, &keys, &recipient.secret_bytes()).await;
    assert_eq!(drain(&mut recipient_link).await, n);
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let addr = init(dir.path());
    let keys = RelayKeys::load(&dir.path().join("relay.key")).unwrap();
    let mut child = run(dir.path());
    let _link = connect(&addr, &keys, &rand::random()).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    for _ in 0..200 {
        if let Some(s) = child.0.try_wait().unwrap() {
            exit = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exit.expect("relay exits after SIGTERM").success());
}

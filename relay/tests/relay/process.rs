//! The real `spore-relay` binary: init, run, SIGKILL, restart, SIGTERM.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spore_protocol::MailboxKey;
use spore_relay::{RelayConfig, RelayKeys};
use spore_testkit::relay_process::{connect, hop};
use spore_testkit::{acked_packet, drain, packet_frame, plain_packet, relay_process};

const BIN: &str = env!("CARGO_BIN_EXE_spore-relay");

fn init(dir: &Path) -> String {
    relay_process::init(Path::new(BIN), dir)
}

fn run(dir: &Path) -> relay_process::KilledOnDrop {
    relay_process::run(Path::new(BIN), dir)
}

#[tokio::test]
async fn init_writes_private_keys_and_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let config = RelayConfig::load(&dir.path().join("relay.toml")).unwrap();
    assert!(config.roles.entry && config.roles.mailbox && !config.roles.mix);
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
    let recipient = MailboxKey::generate(&mut rand::rng());
    let sender = MailboxKey::generate(&mut rand::rng());
    let n = 40;

    let child = run(dir.path());
    let mut link = connect(&addr, &keys, &rand::random()).await;
    let h = hop(&keys);
    let packets: Vec<Vec<u8>> = (0..n)
        .map(|_| acked_packet(&[h], recipient.mailbox_id(), &[h], sender.mailbox_id()).0)
        .collect();
    for p in &packets {
        link.writer.write_frame(&packet_frame(p)).await.unwrap();
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

    // The replay tags were durable before the acks too: the same packets are refused now.
    let mut link = connect(&addr, &keys, &rand::random()).await;
    for p in &packets {
        link.writer.write_frame(&packet_frame(p)).await.unwrap();
    }
    // A fresh packet behind them shows they were all processed.
    let fresh = plain_packet(&[h], recipient.mailbox_id(), &[Duration::ZERO], b"fresh");
    link.writer
        .write_frame(&packet_frame(&fresh))
        .await
        .unwrap();
    link.writer.flush().await.unwrap();
    let mut got = 0;
    for _ in 0..200 {
        got += drain(&mut recipient_link).await;
        if got > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    got += drain(&mut recipient_link).await;
    assert_eq!(
        got, 1,
        "only the fresh packet is stored; the replays are refused"
    );
    let mut sender_link = connect(&addr, &keys, &sender.secret_bytes()).await;
    assert_eq!(drain(&mut sender_link).await, 0, "replays were acked");
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let addr = init(dir.path());
    let keys = RelayKeys::load(&dir.path().join("relay.key")).unwrap();
    let mut child = run(dir.path());
    let _link = connect(&addr, &keys, &rand::random()).await;
    // The shell's builtin `kill`: no extra package or crate needed.
    let status = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.0.id())])
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

#[tokio::test]
async fn descriptor_command_prints_a_signed_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let keys = RelayKeys::load(&dir.path().join("relay.key")).unwrap();
    let out = Command::new(BIN)
        .arg("descriptor")
        .arg("--config")
        .arg(dir.path().join("relay.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex_text = String::from_utf8(out.stdout).unwrap();
    let bytes = hex::decode(hex_text.trim()).unwrap();
    let d = spore_protocol::directory::RelayDescriptor::from_bytes(&bytes).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    d.verify(now).unwrap();
    assert_eq!(d.id, keys.relay_id());
    assert_eq!(d.link_key, keys.link_public());
    assert_eq!(d.sphinx_keys.len(), 2, "current and next epoch");
    assert!(d.roles.entry && d.roles.mailbox && !d.roles.mix);
}

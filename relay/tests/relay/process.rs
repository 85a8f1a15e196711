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

/// Like [`run`], with info logs written to `log`.
fn run_logged(dir: &Path, log: &Path) -> relay_process::KilledOnDrop {
    let file = std::fs::File::create(log).unwrap();
    relay_process::KilledOnDrop(
        relay_process::run_command(Path::new(BIN), dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(file)
            .spawn()
            .unwrap(),
    )
}

/// SIGTERM, then waits (at most 10 s) for a successful exit.
async fn sigterm(child: &mut relay_process::KilledOnDrop) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.0.id())])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(s) = child.0.try_wait().unwrap() {
            assert!(s.success(), "relay exit status after SIGTERM: {s}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("relay did not exit within 10 s of SIGTERM");
}

/// The number after `name=` on the first log line that contains `message`.
fn logged_count(log: &Path, message: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(log).unwrap();
    // Strip ANSI escapes, in case the log is coloured anyway.
    let mut plain = String::with_capacity(text.len());
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let line = plain.lines().find(|l| l.contains(message))?;
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_delayed_packet_and_the_restart_releases_them_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let addr = init(dir.path());
    let keys = RelayKeys::load(&dir.path().join("relay.key")).unwrap();
    let recipient = MailboxKey::generate(&mut rand::rng());
    let (log1, log2) = (dir.path().join("run1.log"), dir.path().join("run2.log"));
    let n = 400usize;
    let mut child = run_logged(dir.path(), &log1);
    let mut link = connect(&addr, &keys, &rand::random()).await;
    let h = hop(&keys);
    // Each packet loops through the relay: held there for 1-4 s (near the end of the delays
    // a real network asks for), then stored in the mailbox.
    let delays: Vec<Duration> = (0..n)
        .map(|i| Duration::from_millis(1000 + (i as u64 * 7919) % 3000))
        .collect();
    let packets: Vec<Vec<u8>> = delays
        .iter()
        .enumerate()
        .map(|(i, d)| {
            plain_packet(
                &[h, h],
                recipient.mailbox_id(),
                &[*d, Duration::ZERO],
                format!("{i}").as_bytes(),
            )
        })
        .collect();
    // A steady 200 packets/s.
    let start = tokio::time::Instant::now();
    let mut deadlines = Vec::with_capacity(n);
    for (p, d) in packets.iter().zip(&delays) {
        let p = p.clone().into_boxed_slice().try_into().unwrap();
        link.writer
            .write_frame(&spore_protocol::link::Frame::Packet(p))
            .await
            .unwrap();
        link.writer.flush().await.unwrap();
        deadlines.push(tokio::time::Instant::now() + *d);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Everything is read and committed; part of it has left, the rest waits in the queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&mut child).await;
    let stopped = tokio::time::Instant::now();
    let kept = logged_count(&log1, "kept the held packets", "packets").unwrap_or(0);

    let _child = run_logged(dir.path(), &log2);
    let mut recipient_link = connect(&addr, &keys, &recipient.secret_bytes()).await;
    // Never early: what is in the mailbox right after the restart left no sooner than its time.
    // (Counted against the end of the drain: pulling takes a while on a loaded machine, and
    // what came due while it ran may rightly be in it.)
    let mut got = drain(&mut recipient_link).await;
    let first_look = tokio::time::Instant::now();
    let due_by_first_look = deadlines
        .iter()
        .filter(|d| **d <= first_look + Duration::from_millis(100))
        .count();
    assert!(
        got <= due_by_first_look,
        "{got} stored before {due_by_first_look} were due"
    );
    let last_deadline = deadlines.iter().max().copied().unwrap();
    while got < n && tokio::time::Instant::now() < last_deadline + Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        got += drain(&mut recipient_link).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    got += drain(&mut recipient_link).await;
    let restored = logged_count(&log2, "restored the packets held", "packets").unwrap_or(0);
    let late = logged_count(&log2, "restored the packets held", "past_their_time").unwrap_or(0);
    eprintln!(
        "graceful stop: {n} packets at 200/s with 1-4 s delays, SIGTERM {:.1} s after the first; \
         {kept} kept at stop, {restored} restored ({late} past their time), {got} of {n} \
         delivered, {} lost",
        (stopped - start).as_secs_f64(),
        n.saturating_sub(got)
    );
    assert!(kept > 0, "the stop came while packets were held");
    assert_eq!(restored, kept, "every kept packet is restored");
    assert_eq!(got, n, "0 of {n} lost, none twice");
    assert!(
        !dir.path().join("data").join("delayed.packets").exists(),
        "the file is read once"
    );
}

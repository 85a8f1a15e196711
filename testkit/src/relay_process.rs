//! The real `spore-relay` binary as a child process: `init` into a folder (alone, or as a
//! member of a [`Testnet`]), `run` it, SIGKILL it by dropping it, and connect to it while it
//! comes up.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spore_protocol::directory::RelayDescriptor;
use spore_protocol::packet::RouteHop;
use spore_relay::{Link, RelayConfig, RelayKeys};

use crate::Testnet;

/// How long [`connect`] waits for a starting relay to accept links.
const COME_UP: Duration = Duration::from_secs(5);

/// A child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct KilledOnDrop(pub Child);

impl KilledOnDrop {
    /// SIGKILL now, without the chance to flush anything.
    pub fn sigkill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// `spore-relay init` into `dir` as an entry+mailbox relay on a free port, then makes the
/// config test-friendly (no fixed metrics port). Returns the listen address.
pub fn init(bin: &Path, dir: &Path) -> String {
    let listen = format!("127.0.0.1:{}", free_port());
    let out = Command::new(bin)
        .args(["init", "--dir"])
        .arg(dir)
        .args(["--role", "edge", "--listen", &listen])
        .output()
        .expect("spore-relay init runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("relay.toml");
    let text = std::fs::read_to_string(&path).expect("init wrote relay.toml");
    std::fs::write(
        &path,
        text.replace("metrics_listen = ", "# metrics_listen = "),
    )
    .expect("relay.toml is writable");
    listen
}

/// `spore-relay init` in `dir` as an entry+mailbox relay of `net`: its directory file, its
/// authority, its epoch length and delay bound, one Sphinx worker. Returns the listen address,
/// the keys and the signed descriptor to publish with [`Testnet::publish_with_external`]
/// (the relay must be in the directory before it runs: it loads the directory at start).
pub fn init_for_testnet(
    bin: &Path,
    dir: &Path,
    net: &Testnet,
) -> (String, RelayKeys, RelayDescriptor) {
    let listen = init(bin, dir);
    let path = dir.join("relay.toml");
    let params = net.params();
    let mut text = std::fs::read_to_string(&path).expect("init wrote relay.toml");
    for (from, to) in [
        (
            "epoch_length_secs = 3600".to_owned(),
            format!("epoch_length_secs = {}", params.epoch_length_secs),
        ),
        (
            "max_delay_ms = 60000".to_owned(),
            format!("max_delay_ms = {}", params.max_delay_ms),
        ),
        ("workers = 0".to_owned(), "workers = 1".to_owned()),
        (
            "# path = \"directory.bin\"".to_owned(),
            format!("path = {:?}", net.directory_path().display().to_string()),
        ),
        (
            "authorities = []\nthreshold = 1\nrefresh_secs = 60".to_owned(),
            format!(
                "authorities = [\"{}\"]\nthreshold = 1\nrefresh_secs = 1",
                hex::encode(net.authority())
            ),
        ),
    ] {
        assert!(text.contains(&from), "relay.toml has no `{from}`");
        text = text.replace(&from, &to);
    }
    std::fs::write(&path, text).expect("relay.toml is writable");
    let config = RelayConfig::load(&path).expect("relay.toml loads");
    let keys = RelayKeys::load(&config.key_file).expect("init wrote the relay's keys");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let descriptor = spore_relay::build_descriptor(&config, &keys, &listen, now)
        .expect("the relay's descriptor builds");
    (listen, keys, descriptor)
}

/// `spore-relay run --config <dir>/relay.toml`, quiet.
pub fn run_command(bin: &Path, dir: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("run")
        .arg("--config")
        .arg(dir.join("relay.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Starts the relay [`init`] set up in `dir`.
pub fn run(bin: &Path, dir: &Path) -> KilledOnDrop {
    KilledOnDrop(
        run_command(bin, dir)
            .spawn()
            .expect("spore-relay run starts"),
    )
}

/// A link to the relay at `addr`, retried every 10 ms while it comes up.
pub async fn connect(addr: &str, keys: &RelayKeys, secret: &[u8; 32]) -> Link {
    let deadline = Instant::now() + COME_UP;
    loop {
        if let Ok(l) = Link::connect(addr, secret, Some(keys.link_public())).await {
            return l;
        }
        if Instant::now() > deadline {
            panic!("relay at {addr} did not come up");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The route hop of a relay process with the default epoch length, for the epoch of now.
pub fn hop(keys: &RelayKeys) -> RouteHop {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let epoch = now / spore_relay::MixConfig::default().epoch_length_secs;
    RouteHop {
        id: keys.relay_id(),
        sphinx_key: keys.sphinx_public(epoch),
    }
}

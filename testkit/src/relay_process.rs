//! The real `spore-relay` binary as a child process: `init` into a folder, `run` it, SIGKILL it
//! by dropping it, and connect to it while it comes up.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spore_protocol::packet::RouteHop;
use spore_relay::{Link, RelayKeys};

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

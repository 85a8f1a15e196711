//! Command-line interface of `spore-relay` (clap derive). Each subcommand is a thin call into
//! the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use spore_relay::{Health, Relay, RelayConfig, RelayKeys, RolesConfig, Template, UtcTime};

/// The Spore relay: a mix node and/or mailbox for the Spore mixnet.
#[derive(Debug, Parser)]
#[command(
    name = "spore-relay",
    version,
    about = "Spore relay: a mix node, entry and/or mailbox of the Spore mixnet for Matrix.",
    after_help = "Getting started:\n  \
        spore-relay init --dir /var/lib/spore-relay --role mix --layer 2\n  \
        spore-relay descriptor --config /var/lib/spore-relay/relay.toml --out relay.desc\n  \
        spore-relay run --config /var/lib/spore-relay/relay.toml\n\n\
        Logs go to stderr; RUST_LOG=debug shows per-link detail (never at info)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create keys and a commented relay.toml in a new directory.
    Init {
        /// Directory to create (keys, config, data).
        #[arg(long)]
        dir: PathBuf,
        /// What this relay does.
        #[arg(long, value_enum, default_value_t = Role::Mix)]
        role: Role,
        /// Mix layer (1..=3) for a mix.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
        layer: u8,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:7400")]
        listen: SocketAddr,
    },
    /// Run the relay until SIGINT or SIGTERM.
    Run {
        /// Path to relay.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask the running relay how it is (its /health endpoint on metrics_listen): one screen,
    /// exit status 0 when healthy, 1 when not or when the relay does not answer.
    Status {
        /// Path to relay.toml (for metrics_listen).
        #[arg(long)]
        config: PathBuf,
        /// Print the health report as JSON (what GET /health returns).
        #[arg(long)]
        json: bool,
    },
    /// Create the relay's key file if it does not exist (the Debian package's postinst uses
    /// this); prints the relay id and link key either way.
    Keygen {
        /// Where the keys go (mode 0600); an existing file is kept, never overwritten.
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Print this relay's signed descriptor for the directory authorities.
    Descriptor {
        /// Path to relay.toml.
        #[arg(long)]
        config: PathBuf,
        /// Write the binary descriptor to this file instead of printing hex.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Mix node in one layer.
    Mix,
    /// Mailbox relay (final hop, stores for offline recipients).
    Mailbox,
    /// Mix and mailbox.
    Both,
    /// Entry relay (first hop for clients).
    Entry,
    /// Entry and mailbox: where homeservers connect and keep their mailboxes.
    Edge,
}

impl Role {
    fn roles(self) -> RolesConfig {
        match self {
            Role::Mix => RolesConfig {
                entry: false,
                mix: true,
                mailbox: false,
            },
            Role::Mailbox => RolesConfig {
                entry: false,
                mix: false,
                mailbox: true,
            },
            Role::Both => RolesConfig {
                entry: false,
                mix: true,
                mailbox: true,
            },
            Role::Entry => RolesConfig {
                entry: true,
                mix: false,
                mailbox: false,
            },
            Role::Edge => RolesConfig {
                entry: true,
                mix: false,
                mailbox: true,
            },
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spore-relay: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: under systemd or `2> file` the escape codes end up in logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init {
            dir,
            role,
            layer,
            listen,
        } => init(&dir, role, layer, listen),
        Command::Run {
            config: config_path,
        } => {
            init_tracing();
            let config = RelayConfig::load(&config_path)?;
            let keys = load_keys(&config_path, &config)?;
            // Everything `descriptor` checks, checked before starting.
            let address = config.publishable_address(config.listen)?;
            spore_relay::build_descriptor(&config, &keys, &address, unix_now()?)
                .context("the descriptor this config would publish does not validate")?;
            let source = config.directory_source();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async move {
                let relay = Relay::start(config, keys, source).await?;
                relay.run_until_signal().await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => status(&config, json),
        Command::Keygen { key_file } => {
            let keys = RelayKeys::load_or_generate(&key_file)?;
            println!("relay id   {}", keys.relay_id());
            println!("link key   {}", hex::encode(keys.link_public()));
            println!("key file   {}", key_file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Descriptor {
            config: config_path,
            out,
        } => {
            let config = RelayConfig::load(&config_path)?;
            let keys = load_keys(&config_path, &config)?;
            let address = config.publishable_address(config.listen)?;
            let d = spore_relay::build_descriptor(&config, &keys, &address, unix_now()?)
                .context("the descriptor this config would publish does not validate")?;
            match out {
                Some(path) => std::fs::write(&path, d.to_bytes())
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("{}", hex::encode(d.to_bytes())),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn unix_now() -> anyhow::Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs())
}

/// Loads `key_file`; an error names the field, the config it was set in and the fix.
fn load_keys(config_path: &Path, config: &RelayConfig) -> anyhow::Result<RelayKeys> {
    let path = &config.key_file;
    RelayKeys::load(path).map_err(|e| {
        let why = match e {
            spore_relay::RelayError::File { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                format!(
                    "does not exist; create it with `spore-relay keygen --key-file {}`",
                    path.display()
                )
            }
            spore_relay::RelayError::File { source, .. } => format!("cannot be read: {source}"),
            other => format!("is not a relay key file: {other}"),
        };
        anyhow::anyhow!(
            "key_file {} (set in {}) {why}",
            path.display(),
            config_path.display()
        )
    })
}

/// The error and its causes on one line, each cause once: a layer whose message already
/// contains its source's text (`#[error("... {0}")]`) is not followed by that text again.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn init(dir: &Path, role: Role, layer: u8, listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let config_path = dir.join("relay.toml");
    if config_path.exists() {
        bail!("{} already exists; not overwriting", config_path.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let keys = RelayKeys::generate();
    keys.save(&dir.join("relay.key"))?;
    let roles = role.roles();
    let layer = if roles.mix { layer } else { 0 };
    let metrics_listen = free_metrics_port();
    let text = RelayConfig::commented_template(&Template {
        listen,
        roles,
        layer,
        key_file: "relay.key",
        data_dir: "data",
        metrics_listen,
    });
    RelayConfig::from_toml(&text).context("generated config does not validate")?;
    std::fs::write(&config_path, text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    println!("relay id   {}", keys.relay_id());
    println!("link key   {}", hex::encode(keys.link_public()));
    println!("config     {}", config_path.display());
    match metrics_listen {
        Some(m) => println!("metrics    http://{m}/metrics (health: /health)"),
        None => println!(
            "metrics    off: no free port in 127.0.0.1:{}..{}; set metrics_listen in the config",
            METRICS_PORTS.start, METRICS_PORTS.end
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Ports `init` tries for the metrics endpoint: 9464 (the OpenTelemetry/Prometheus exporter
/// convention) and the next few, so a second relay on a host does not collide with the first.
const METRICS_PORTS: std::ops::Range<u16> = 9464..9564;

/// The first metrics port in [`METRICS_PORTS`] nothing listens on now. (A relay that is
/// configured but stopped is not seen: `init` prints the port so the operator can check.)
fn free_metrics_port() -> Option<SocketAddr> {
    METRICS_PORTS
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .find(|addr| std::net::TcpListener::bind(addr).is_ok())
}

/// `spore-relay status`: fetches `/health` from the running relay and prints it.
fn status(config_path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = RelayConfig::load(config_path)?;
    let Some(addr) = config.metrics_listen else {
        bail!(
            "{}: metrics_listen is not set, so the running relay has no /health endpoint to ask; \
             set it (e.g. metrics_listen = \"127.0.0.1:9464\") and restart the relay",
            config_path.display()
        );
    };
    let (code, body) = http_get(addr, "/health").with_context(|| {
        format!(
            "no answer from the relay's health endpoint http://{addr}/health \
             (metrics_listen in {}): is the relay running?",
            config_path.display()
        )
    })?;
    let health: Health = serde_json::from_str(&body).with_context(|| {
        format!("http://{addr}/health answered {code} with something other than a health report")
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&health)?);
    } else {
        print!("{}", status_screen(&health));
    }
    Ok(if health.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A plain HTTP/1.0 GET on loopback: returns the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP status line")?;
    Ok((code, body.to_owned()))
}

/// The one screen `spore-relay status` prints.
fn status_screen(h: &Health) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let time = |t: Option<u64>| t.map_or_else(|| "-".to_owned(), |t| UtcTime(t).to_string());
    let verdict = if h.healthy { "healthy" } else { "UNHEALTHY" };
    let _ = writeln!(s, "spore-relay {}  {verdict}", h.version);
    for p in &h.problems {
        let _ = writeln!(s, "  problem: {p}");
    }
    for w in &h.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
    let _ = writeln!(s, "uptime          {}", duration(h.uptime_secs));
    let _ = writeln!(s, "roles           {}", h.relay.roles.join(", "));
    let _ = writeln!(s, "listen          {}", h.relay.listen);
    let _ = writeln!(s, "public address  {}", h.relay.public_address);
    let _ = writeln!(s, "directory       {}", h.relay.directory_source);
    let _ = writeln!(s, "  valid until   {}", time(h.directory_valid_until));
    let _ = writeln!(
        s,
        "  listed        {}",
        match (h.listed, h.descriptor_expires_at) {
            (true, Some(e)) => format!("yes (descriptor expires {})", UtcTime(e)),
            (true, None) => "yes".to_owned(),
            (false, _) => "no".to_owned(),
        }
    );
    let _ = writeln!(
        s,
        "links           {} open to next hops, {} next hops failing, {} connect failures; {} inbound",
        h.links_open, h.links_failing, h.link_connect_failures, h.connections_open
    );
    let _ = writeln!(
        s,
        "queues          unwrap {}/{}  delay {}/{}  link {}",
        h.unwrap_queue,
        h.relay.unwrap_queue_limit,
        h.delay_queue,
        h.relay.delay_queue_limit,
        h.link_queue
    );
    if h.relay.mailbox {
        let _ = writeln!(
            s,
            "mailboxes       {} items, {} of {} bytes",
            h.mailbox_items, h.mailbox_bytes, h.relay.disk_budget_bytes
        );
    }
    let _ = writeln!(
        s,
        "loop cover      {}",
        if h.relay.loop_rate > 0.0 {
            format!(
                "{} sent, {} cover received, alarm {}",
                h.loops_sent,
                h.cover_received,
                if h.loop_alarm { "RAISED" } else { "off" }
            )
        } else {
            "off (mix.loop_rate = 0; no loop-loss alarm)".to_owned()
        }
    );
    let _ = writeln!(
        s,
        "packets         {} in, {} dropped",
        h.packets_in, h.packets_dropped
    );
    s
}

/// `3d 04:05:06`.
fn duration(secs: u64) -> String {
    let (d, rest) = (secs / 86_400, secs % 86_400);
    format!(
        "{d}d {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

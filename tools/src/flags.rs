//! Every flag of the `spore` command, as clap types, and nothing else: `main` parses these and
//! hands plain values to the library crates (`spore-tools`, `spore-bench`), which never see clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use spore_protocol::directory::NetworkParams;

/// Spore: a store-and-forward mixnet for peer-to-peer Matrix.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a whole network on loopback and show a federation workload crossing it.
    Demo(DemoArgs),
    /// Generate keys: a directory authority key or a homeserver mailbox key.
    #[command(subcommand)]
    Keygen(KeygenCmd),
    /// Directory authority: build, co-sign, verify, show and serve the signed directory.
    #[command(subcommand)]
    Directory(DirectoryCmd),
    /// Directory authority service: take relays' descriptor uploads, agree with the other
    /// authorities each epoch, publish the threshold-signed directory.
    #[command(subcommand)]
    Authority(AuthorityCmd),
    /// Decode a packet, link frame, directory, descriptor or Spore address and say what an
    /// outside observer can and cannot learn from it.
    Inspect(InspectArgs),
    /// Privacy analysis: anonymity metrics, attack simulations, traces, figures.
    Analyze(AnalyzeArgs),
    /// A local network on loopback that stays up for manual use.
    #[command(subcommand)]
    Testnet(TestnetCmd),
    /// Drive a network with a fixed packet rate and report throughput and loss.
    Load(LoadArgs),
    /// Benchmarks: relay vs the Sphinx floor, latency, mailbox store, client cost.
    Bench(BenchArgs),
}

#[derive(Subcommand)]
pub enum TestnetCmd {
    /// Start relays and a directory in DIR and keep them running until Ctrl-C or `down`.
    Up {
        #[arg(long)]
        dir: PathBuf,
        /// Total relays: 2 entry/mailbox relays plus 3 mix layers sharing the rest (min 5).
        #[arg(long, default_value_t = 8)]
        relays: usize,
    },
    /// Stop the testnet running in DIR.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args)]
pub struct LoadArgs {
    /// The signed directory of the network to load: a file (e.g. DIR/directory.bin of a
    /// testnet) or an authority's URL (`http://host:port/directory`).
    #[arg(long)]
    pub directory: PathBuf,
    /// Packets per second offered to the entry relay.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Seconds to keep pulling after the last packet.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Keep the network's data here instead of a temporary folder.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Federation transactions A sends to B.
    #[arg(long, default_value_t = spore_tools::demo::DemoConfig::default().transactions)]
    pub transactions: usize,
    /// Mixes per layer.
    #[arg(long, default_value_t = 2)]
    pub width: usize,
    /// Print the summary as one JSON object (keys sent, delivered, duplicates, lost, latency_ms).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum KeygenCmd {
    /// An ed25519 key for a directory authority. Prints the public key relays must trust.
    Authority {
        /// Where to write the secret key (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// An X25519 mailbox key for a homeserver. Prints its Spore address for the given relays.
    Mailbox {
        /// Where to write the secret key (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Relay id (hex) of a mailbox relay holding this mailbox; give one or two.
        #[arg(long = "relay", required = true, num_args = 1)]
        relays: Vec<String>,
    },
    /// Print the full public key (64 hex digits) of an existing authority key file: what
    /// relays, clients and other authorities put in their `authorities = [...]` lists.
    Show {
        /// The authority key file written by `spore keygen authority`.
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum AuthorityCmd {
    /// Run the authority service until Ctrl-C or SIGTERM (see docs/operating.md).
    Run {
        /// authority.toml: listen, key_file, peers, threshold, [params].
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum DirectoryCmd {
    /// Collect relay descriptors, check them and sign a directory for the current epoch.
    Build {
        /// The authority's secret key file (from `spore keygen authority`).
        #[arg(long)]
        key: PathBuf,
        /// Descriptor files (from `spore-relay descriptor --out`), or folders of `*.desc` files.
        #[arg(long = "descriptors", required = true, num_args = 1..)]
        descriptors: Vec<PathBuf>,
        /// Where to write the signed directory (replaced atomically).
        #[arg(long)]
        out: PathBuf,
        /// How long the document stays valid.
        #[arg(long, default_value_t = 86_400)]
        valid_secs: u64,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Add this authority's signature to an existing directory (threshold signing).
    Sign {
        #[arg(long)]
        key: PathBuf,
        /// The directory file; rewritten in place.
        file: PathBuf,
    },
    /// Check a directory against trusted authority keys, as relays and clients do.
    Verify {
        /// Trusted authority public key (hex); repeat for several.
        #[arg(long = "authority", required = true)]
        authorities: Vec<String>,
        /// How many of them must have signed.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        file: PathBuf,
    },
    /// Print a directory in human form.
    Show { file: PathBuf },
    /// Serve the directory file over HTTP on loopback (`GET /directory`).
    Serve {
        file: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
    },
}

/// Network parameters published in the directory (defaults are Spore's shipped values).
#[derive(Args)]
pub struct ParamArgs {
    /// Per-hop delay rate mu (1/s); mean per-hop delay is 1/mu.
    #[arg(long, default_value_t = NetworkParams::default().mu)]
    pub mu: f64,
    /// Client payload stream rate lambda_P (packets/s).
    #[arg(long, default_value_t = NetworkParams::default().lambda_p)]
    pub lambda_p: f64,
    /// Client loop cover rate lambda_L (packets/s).
    #[arg(long, default_value_t = NetworkParams::default().lambda_l)]
    pub lambda_l: f64,
    /// Client drop cover rate lambda_D (packets/s).
    #[arg(long, default_value_t = NetworkParams::default().lambda_d)]
    pub lambda_d: f64,
    /// Relay loop cover rate lambda_M (packets/s).
    #[arg(long, default_value_t = NetworkParams::default().lambda_m)]
    pub lambda_m: f64,
    /// Key epoch length in seconds.
    #[arg(long, default_value_t = NetworkParams::default().epoch_length_secs)]
    pub epoch_secs: u64,
}

impl ParamArgs {
    pub fn params(&self) -> NetworkParams {
        NetworkParams {
            mu: self.mu,
            lambda_p: self.lambda_p,
            lambda_l: self.lambda_l,
            lambda_d: self.lambda_d,
            lambda_m: self.lambda_m,
            epoch_length_secs: self.epoch_secs,
            ..NetworkParams::default()
        }
    }
}

#[derive(Args)]
pub struct InspectArgs {
    /// File to inspect (binary, or hex text).
    pub file: Option<PathBuf>,
    /// Inspect these hex bytes instead of a file.
    #[arg(long, conflicts_with = "file")]
    pub hex: Option<String>,
}

// ---------------------------------------------------------------- spore analyze

/// Measure how well a Spore network hides who talks to whom.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    #[command(subcommand)]
    pub command: AnalyzeCommand,
}

#[derive(Debug, Subcommand)]
pub enum AnalyzeCommand {
    /// One Poisson (M/M/inf) mix: entropy of a message passing it, against Loopix's closed form.
    PoissonMix(PoissonMixArgs),
    /// A stratified network: end-to-end sender entropy, epsilon for two senders, latency.
    Network(NetworkArgs),
    /// Replay a recorded trace (JSON lines) through the same adversary and score it.
    Trace(TraceArgs),
    /// Statistical disclosure attack on a long-lived sender's contacts.
    Sda(SdaArgs),
    /// Intersection (hitting-set) attack on online sessions against a mailbox.
    Intersection(IntersectionArgs),
    /// n-1 attack on one mix: target entropy under attack, and how fast missing loops reveal it.
    #[command(name = "n-minus-1")]
    NMinus1(NMinus1Args),
}

#[derive(Debug, Args)]
pub struct IntersectionArgs {
    /// Users who could be the sender.
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
    /// Fraction of epochs a user is online.
    #[arg(long, default_value_t = 0.3)]
    pub online: f64,
    /// Mean online session, epochs.
    #[arg(long, default_value_t = 10.0)]
    pub session: f64,
    /// A delivery is attributed to users online in the last this many epochs.
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Probability the sender sends in an epoch it is online.
    #[arg(long, default_value_t = 0.2)]
    pub send: f64,
    /// Give up after this many epochs.
    #[arg(long, default_value_t = 10_000)]
    pub max_epochs: usize,
    /// Trials.
    #[arg(long, default_value_t = 100)]
    pub trials: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NMinus1Args {
    /// Honest arrival rate before the attack (per second).
    #[arg(long)]
    pub lambda: f64,
    /// Delay rate (per second).
    #[arg(long)]
    pub mu: f64,
    /// Mix loop cover rate lambda_M (per second).
    #[arg(long, default_value_t = 0.0)]
    pub loop_rate: f64,
    /// False alarms per day the loop monitor may raise on an unattacked mix.
    #[arg(long, default_value_t = 1.0)]
    pub false_alarms_per_day: f64,
    /// Trials.
    #[arg(long, default_value_t = 10_000)]
    pub trials: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SdaArgs {
    /// Users (senders and receivers).
    #[arg(long)]
    pub users: usize,
    /// Messages per round (mix batch, or a window of outputs).
    #[arg(long)]
    pub batch: usize,
    /// Friends per user.
    #[arg(long)]
    pub contacts: usize,
    /// Observed rounds in which the target sends.
    #[arg(long)]
    pub rounds: usize,
    /// Rounds without the target for the background estimate (default: --rounds).
    #[arg(long)]
    pub background_rounds: Option<usize>,
    /// Independent trials.
    #[arg(long, default_value_t = 100)]
    pub trials: usize,
    /// Fraction of the target's messages replaced by cover.
    #[arg(long, default_value_t = 0.0)]
    pub cover: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also draw success against rounds (1/64 .. 1x --rounds, with and without --cover) to this SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// Mix layers.
    #[arg(long, default_value_t = 3)]
    pub layers: u32,
    /// Mixes per layer.
    #[arg(long)]
    pub width: u32,
    /// Total packets per second from all clients (cover included).
    #[arg(long)]
    pub rate: f64,
    /// Mean per-hop delay in seconds (1/mu).
    #[arg(long)]
    pub delay: f64,
    /// Clients (each owns one mailbox).
    #[arg(long, default_value_t = 500)]
    pub senders: u32,
    /// Simulated seconds of sending.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Mixes the adversary controls (chosen at random).
    #[arg(long, default_value_t = 0)]
    pub corrupt: u32,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the run as a trace (JSON lines) to this file.
    #[arg(long)]
    pub trace_out: Option<PathBuf>,
    /// Also draw entropy against latency, sweeping --delay over 1/8 .. 4x, to this SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Trace file (JSON lines).
    pub file: PathBuf,
    /// Ground truth in a separate file.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// A relay whose input-output links the adversary knows (repeatable).
    #[arg(long)]
    pub corrupt: Vec<String>,
    /// Challenge senders for epsilon, `A,B` (default: the trace's meta record).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    pub challenge: Option<Vec<String>>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PoissonMixArgs {
    /// Real message arrival rate (per second).
    #[arg(long)]
    pub lambda: f64,
    /// Delay rate per message (per second; mean delay 1/mu).
    #[arg(long)]
    pub mu: f64,
    /// Mix loop cover rate lambda_M (per second).
    #[arg(long, default_value_t = 0.0)]
    pub loop_rate: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Outputs measured after burn-in.
    #[arg(long, default_value_t = 200_000)]
    pub outputs: usize,
    /// Also draw entropy against lambda/mu (1/4 .. 256, at this mu and loop rate) to this SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

// ---------------------------------------------------------------- spore bench

/// `spore bench …` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCmd,
    /// Print one JSON object instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Bare Sphinx unwrap rate vs a real spore-relay process (1 and 2 workers).
    Relay {
        /// Packets per timed run.
        #[arg(long, default_value_t = 20_000)]
        packets: usize,
    },
    /// Added per-hop latency at 10%, 50% and 90% of measured capacity.
    Latency {
        /// Sphinx workers of the relay under test.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Packets in the capacity burst.
        #[arg(long, default_value_t = 10_000)]
        capacity_packets: usize,
        /// Seconds of paced load per level.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Mean per-hop delay of the packets, ms (default: the network's 1/mu); 0 runs only
        /// the delay-0 levels.
        #[arg(long)]
        mean_delay_ms: Option<f64>,
    },
    /// Durable store, pull/release, disk and memory of the mailbox store.
    Mailbox {
        /// Packets to store (10^6 takes a few minutes).
        #[arg(long, default_value_t = 1_000_000)]
        packets: usize,
        /// Keep the database here instead of a temporary folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// How fast a client that comes back online drains a full mailbox: catch-up pulls against
    /// the fixed pull cadence, in the same run.
    Catchup {
        /// Items queued for the catch-up recipient.
        #[arg(long, default_value_t = 10_000)]
        items: usize,
        /// Seconds the fixed-cadence recipient is measured over.
        #[arg(long, default_value_t = 10.0)]
        baseline_seconds: f64,
    },
    /// CPU share of one client transport at the default rates, and packet build rate;
    /// with --throughput, sustained acknowledged fragments per second of one client.
    Client {
        /// Seconds of the CPU (or throughput) window.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Packets built for the build rate.
        #[arg(long, default_value_t = 2_000)]
        build_packets: usize,
        /// Measure sustained throughput instead (bulk rates unless overridden below).
        #[arg(long)]
        throughput: bool,
        /// Messages queued for --throughput (each ~8 fragments).
        #[arg(long, default_value_t = 1_600)]
        messages: usize,
        /// Packet build threads of the client (0: build on the engine's task).
        #[arg(long, default_value_t = 2)]
        build_threads: usize,
        /// Override the payload-stream rate (per s).
        #[arg(long)]
        lambda_p: Option<f64>,
        /// Override the loop cover rate (per s).
        #[arg(long)]
        lambda_l: Option<f64>,
        /// Override the drop cover rate (per s).
        #[arg(long)]
        lambda_d: Option<f64>,
        /// Override mu (mean per-hop delay 1/mu s).
        #[arg(long)]
        mu: Option<f64>,
        /// Override the pull interval (ms).
        #[arg(long)]
        pull_ms: Option<u64>,
    },
}

//! What a multi-host test runs inside a host's network namespace besides the Spore binaries
//! (the test process itself stays outside every namespace):
//!
//! * `stage LISTEN TARGET DELAY_MS`: the host's delay/loss stage ([`spore_testkit::link_stage`])
//!   from its public address to a service on its loopback.
//! * `homeserver`: a [`StubHomeserver`] on the host's loopback that prints `listening URL`,
//!   then `received PATH` for every request it gets; it reads `send SIDECAR DESTINATION ORIGIN
//!   TXN` lines on stdin, PUTs that transaction to the sidecar's outbound endpoint and prints
//!   `acked TXN STATUS` or `failed TXN REASON`.
//! * `wait-directory URL RELAYS TIMEOUT_SECS`: exits 0 once `URL` serves a directory listing
//!   at least `RELAYS` relays, 1 at the timeout.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use spore_protocol::directory::Directory;
use spore_testkit::StubHomeserver;
use spore_testkit::link_stage::{self, Impairment};
use tokio::io::AsyncBufReadExt;

type Failure = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spore-netns-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Vec<String>) -> Result<ExitCode, Failure> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["stage", listen, target, delay_ms] => {
            let listener = tokio::net::TcpListener::bind(listen.parse::<SocketAddr>()?).await?;
            let target: SocketAddr = target.parse()?;
            let delay = Duration::from_millis(delay_ms.parse()?);
            link_stage::run(listener, target, Impairment::with_delay(delay)).await?;
            Ok(ExitCode::SUCCESS)
        }
        ["homeserver"] => homeserver().await,
        ["wait-directory", url, relays, timeout] => {
            let (relays, timeout): (usize, u64) = (relays.parse()?, timeout.parse()?);
            let deadline = Instant::now() + Duration::from_secs(timeout);
            while Instant::now() < deadline {
                let fetched = spore_relay::DirectorySource::Http((*url).to_owned())
                    .fetch()
                    .await;
                if let Ok(Some(bytes)) = fetched
                    && let Ok(d) = Directory::from_bytes(&bytes)
                    && d.relays.len() >= relays
                {
                    println!("epoch {} relays {}", d.epoch, d.relays.len());
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(ExitCode::FAILURE)
        }
        _ => Err(
            "usage: spore-netns-agent stage LISTEN TARGET DELAY_MS | homeserver | \
                  wait-directory URL RELAYS TIMEOUT_SECS"
                .into(),
        ),
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn homeserver() -> Result<ExitCode, Failure> {
    let hs = StubHomeserver::start().await?;
    say(&format!("listening {}", hs.url()));
    let watched = hs.clone();
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let received = watched.received();
            for r in &received[seen..] {
                say(&format!("received {}", r.path));
            }
            seen = received.len();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let [verb, sidecar, destination, origin, txn] = words.as_slice() else {
            say(&format!("failed - unreadable command {line:?}"));
            continue;
        };
        if verb != "send" {
            say(&format!("failed - unknown command {verb:?}"));
            continue;
        }
        let request =
            http::Request::put(format!("http://{sidecar}/_matrix/federation/v1/send/{txn}"))
                .header("Host", destination.as_str())
                .header("Authorization", format!("X-Matrix origin=\"{origin}\""))
                .body(Full::new(Bytes::from_static(br#"{"pdus":[],"edus":[]}"#)));
        let (http, txn) = (http.clone(), txn.clone());
        tokio::spawn(async move {
            let result = match request {
                Ok(request) => http
                    .request(request)
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(status) => say(&format!("acked {txn} {status}")),
                Err(e) => say(&format!("failed {txn} {e}")),
            }
        });
    }
    // Stdin closed: the test is gone.
    Ok(ExitCode::SUCCESS)
}

//! A stand-in sidecar for the Synapse interop script while the Spore transport is wired in:
//! the real outbound proxy, local CA, server key cache and inbound delivery of spore-sidecar,
//! with bundles carried between two gateways over loopback HTTP instead of the mixnet.
//!
//! It keeps Spore's promises the script tests (transactions answered once queued, delivered
//! in order exactly once when the peer comes back; request/response with a timeout), but the
//! queue lives in memory and nothing is mixed: it tests the homeserver side, not the network.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use spore_protocol::bundle::{Bundle, BundleBody};
use spore_protocol::{FederationRequest, FederationResponse};
use spore_sidecar::{
    Carrier, CarryError, CarryFuture, Delivered, LocalCa, LocalHomeserver, OutboundProxy, OwnKeys,
    ProxySettings, RequestTimeouts, RetryPolicy, ServerKeyCache, deliver_inbound,
};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify, watch};

#[derive(Parser)]
struct Args {
    /// Our homeserver's server name.
    #[arg(long)]
    server_name: String,
    /// Our homeserver's federation listener (plain HTTP).
    #[arg(long)]
    homeserver: String,
    /// Where the homeserver's https_proxy points.
    #[arg(long)]
    proxy_listen: SocketAddr,
    /// Where the peer gateway posts bundles for us.
    #[arg(long)]
    bundle_listen: SocketAddr,
    /// A peer: `server.name=http://127.0.0.1:PORT` (its bundle listener). Repeatable.
    #[arg(long)]
    peer: Vec<String>,
    /// CA and key cache directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Request/response timeout in seconds.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ca = Arc::new(LocalCa::load_or_create(&args.data_dir).context("local CA")?);
    let keys = Arc::new(ServerKeyCache::open(
        args.data_dir.join("server_keys.json"),
        spore_sidecar::unix_ms(),
    ));
    let homeserver = LocalHomeserver::new(&args.homeserver, &args.server_name);
    let own_keys = OwnKeys::new(homeserver.clone());
    let mut peers = HashMap::new();
    for p in &args.peer {
        let (name, url) = p.split_once('=').context("--peer name=url")?;
        peers.insert(
            name.to_ascii_lowercase(),
            url.trim_end_matches('/').to_owned(),
        );
    }
    let carrier = Arc::new(LoopbackCarrier::new(args.server_name.clone(), peers));
    let proxy = OutboundProxy::new(
        ca,
        keys.clone(),
        own_keys,
        carrier,
        ProxySettings {
            timeouts: RequestTimeouts::uniform(Duration::from_secs(args.request_timeout)),
        },
    );
    let (_stop, stop_rx) = watch::channel(false);
    let proxy_listener = TcpListener::bind(args.proxy_listen).await?;
    let bundle_listener = TcpListener::bind(args.bundle_listen).await?;
    tracing::info!(proxy = %args.proxy_listen, bundles = %args.bundle_listen, "gateway up");
    tokio::spawn(proxy.serve(proxy_listener, stop_rx));
    loop {
        let (stream, _) = bundle_listener.accept().await?;
        let homeserver = homeserver.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let homeserver = homeserver.clone();
                    let keys = keys.clone();
                    async move {
                        let status_body =
                            match Limited::new(req.into_body(), 16 << 20).collect().await {
                                Err(_) => (400, Vec::new()),
                                Ok(b) => inbound(&homeserver, &keys, &b.to_bytes()).await,
                            };
                        let mut r = hyper::Response::new(Full::new(Bytes::from(status_body.1)));
                        *r.status_mut() = http::StatusCode::from_u16(status_body.0)
                            .unwrap_or(http::StatusCode::BAD_GATEWAY);
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One bundle from the peer gateway: 200 + the encoded response bundle (request/response),
/// 200 empty once a transaction is accepted, 5xx if it could not be delivered.
async fn inbound(
    homeserver: &LocalHomeserver,
    keys: &ServerKeyCache,
    bytes: &[u8],
) -> (u16, Vec<u8>) {
    let Ok(bundle) = Bundle::decode(bytes) else {
        return (400, Vec::new());
    };
    let BundleBody::Request {
        request_id,
        request,
        reply_surbs,
        ..
    } = bundle.body
    else {
        return (400, Vec::new());
    };
    // The loopback stand-in marks "wants a response" with one all-zero reply SURB.
    let wants_response = !reply_surbs.is_empty();
    // No inbox behind this stand-in: the peer gateway is told of a failure instead.
    match deliver_inbound(
        homeserver,
        keys,
        // No seal over loopback HTTP, so no authenticated sender: every bundle counts as from
        // one peer (this stand-in trusts its one peer gateway, as it always did).
        &LOOPBACK_SENDER,
        &bundle.origin,
        bundle.server_keys.as_deref(),
        &request,
        wants_response,
        RetryPolicy::GIVE_UP_EARLY,
    )
    .await
    {
        Ok(Delivered::Expired) => (504, Vec::new()),
        Ok(Delivered::WrongSender) => (403, Vec::new()),
        Ok(Delivered::Answered(response)) => {
            tracing::info!(
                status = response.status,
                "request delivered, response returned"
            );
            let reply = Bundle {
                origin: homeserver.server_name().to_owned(),
                sender: None,
                server_keys: None,
                body: BundleBody::Response {
                    request_id,
                    response,
                },
            };
            (200, reply.encode())
        }
        Ok(Delivered::Accepted) => {
            tracing::info!("transaction delivered to the homeserver");
            (200, Vec::new())
        }
        Err(e) => {
            tracing::warn!(error = %e, "delivery failed");
            (502, Vec::new())
        }
    }
}

/// The sender key every loopback bundle is bound to (there is no seal to authenticate one).
const LOOPBACK_SENDER: [u8; 32] = [0; 32];

/// Encoded bundles waiting for one destination, and a wake-up for its sender task.
type TxnQueue = Arc<(Mutex<VecDeque<Vec<u8>>>, Notify)>;

/// Carries bundles to the peer gateway over loopback HTTP. Transactions wait in a FIFO per
/// destination until the peer takes them (the peer may be down for a while).
struct LoopbackCarrier {
    origin: String,
    peers: HashMap<String, String>,
    client: Client<HttpConnector, Full<Bytes>>,
    queues: Mutex<HashMap<String, TxnQueue>>,
}

impl LoopbackCarrier {
    fn new(origin: String, peers: HashMap<String, String>) -> Self {
        Self {
            origin,
            peers,
            client: Client::builder(TokioExecutor::new()).build_http(),
            queues: Mutex::new(HashMap::new()),
        }
    }

    fn bundle(
        &self,
        request: FederationRequest,
        server_keys: Option<Vec<u8>>,
        wants_response: bool,
    ) -> Bundle {
        Bundle {
            origin: self.origin.clone(),
            sender: None,
            server_keys,
            body: BundleBody::Request {
                request_id: rand_id(),
                sequence: None,
                request,
                reply_surbs: if wants_response {
                    vec![vec![0u8; spore_protocol::params::SURB_SIZE]]
                } else {
                    Vec::new()
                },
            },
        }
    }

    async fn post(
        client: &Client<HttpConnector, Full<Bytes>>,
        url: &str,
        bytes: Vec<u8>,
    ) -> Result<(u16, Bytes), String> {
        let req = http::Request::post(format!("{url}/_spore/bundle"))
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| e.to_string())?;
        let r = client.request(req).await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let body = r
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

fn rand_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    id.copy_from_slice(&t.to_le_bytes());
    id
}

impl Carrier for LoopbackCarrier {
    fn send(
        &self,
        destination: &str,
        request: FederationRequest,
        server_keys: Option<Vec<u8>>,
    ) -> CarryFuture<'_, ()> {
        let destination = destination.to_ascii_lowercase();
        Box::pin(async move {
            let url = self
                .peers
                .get(&destination)
                .cloned()
                .ok_or(CarryError::UnknownDestination(destination.clone()))?;
            let bytes = self.bundle(request, server_keys, false).encode();
            let mut queues = self.queues.lock().await;
            if let Some(q) = queues.get(&destination) {
                q.0.lock().await.push_back(bytes);
                q.1.notify_one();
                return Ok(());
            }
            let q = Arc::new((Mutex::new(VecDeque::from([bytes])), Notify::new()));
            queues.insert(destination, q.clone());
            let client = self.client.clone();
            tokio::spawn(async move {
                loop {
                    let next = q.0.lock().await.front().cloned();
                    let Some(bytes) = next else {
                        q.1.notified().await;
                        continue;
                    };
                    match Self::post(&client, &url, bytes).await {
                        Ok((200, _)) => {
                            q.0.lock().await.pop_front();
                        }
                        other => {
                            tracing::info!(result = ?other.map(|r| r.0), "peer gateway did not take the transaction; will retry");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
            Ok(())
        })
    }

    fn request(
        &self,
        destination: &str,
        request: FederationRequest,
        server_keys: Option<Vec<u8>>,
        timeout: Duration,
    ) -> CarryFuture<'_, FederationResponse> {
        let destination = destination.to_ascii_lowercase();
        Box::pin(async move {
            let url = self
                .peers
                .get(&destination)
                .cloned()
                .ok_or(CarryError::UnknownDestination(destination.clone()))?;
            let bytes = self.bundle(request, server_keys, true).encode();
            let (status, body) =
                tokio::time::timeout(timeout, Self::post(&self.client, &url, bytes))
                    .await
                    .map_err(|_| CarryError::Timeout)?
                    .map_err(CarryError::Failed)?;
            if status != 200 {
                return Err(CarryError::Failed(format!("peer gateway status {status}")));
            }
            match Bundle::decode(&body).map(|b| b.body) {
                Ok(BundleBody::Response { response, .. }) => Ok(response),
                _ => Err(CarryError::Failed("bad response bundle".into())),
            }
        })
    }
}

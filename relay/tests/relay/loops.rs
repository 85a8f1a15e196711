//! Relay loop cover is on by default at the directory's λ_M, and loop loss raises an alarm
//! (issue 15): a network with a layer-2 "mix" that swallows every packet (an n-1 style
//! dropping relay) sets it off; an honest network over the same time does not.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spore_protocol::directory::{Directory, NetworkParams};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::network::Network;

/// Publishes the network's directory with loop rate `lambda_m`, and the layer-2 mix at
/// `mix2_address` if given.
async fn publish(net: &Network, lambda_m: f64, mix2_address: Option<&str>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let relays = net
        .all()
        .iter()
        .map(|r| match mix2_address {
            Some(a) if r.keys.relay_id() == net.mixes[1].keys.relay_id() => {
                spore_relay::build_descriptor(&r.config, &r.keys, a, now).unwrap()
            }
            _ => r.r().descriptor().unwrap(),
        })
        .collect();
    let mut doc = Directory {
        epoch: now / 3600,
        valid_after: now - 60,
        valid_until: now + 3600,
        params: NetworkParams {
            lambda_m,
            ..NetworkParams::default()
        },
        relays,
        signatures: vec![],
    };
    doc.sign(&net.authority).unwrap();
    net.directory.set(doc.to_bytes());
    for r in net.all() {
        r.r().refresh_directory().await.unwrap();
    }
}

/// A listener that accepts links and reads and discards everything sent on them.
async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn alarms(net: &Network) -> u64 {
    net.all()
        .iter()
        .map(|r| r.r().metrics().loop_loss_alarms)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropping_mix_raises_the_loop_loss_alarm_and_an_honest_network_none() {
    // Loop cover needs no configuration: the directory's λ_M (here 10/s so that a window
    // holds enough loops in a short test) switches it on.
    let honest = Network::start(|_| {}).await;
    let attacked = Network::start(|_| {}).await;
    publish(&honest, 10.0, None).await;
    publish(&attacked, 10.0, Some(&black_hole().await)).await;

    let raised = spore_testkit::wait_until(Duration::from_secs(40), || alarms(&attacked) > 0).await;
    assert!(raised, "no alarm: {:?}", attacked.mailbox.r().metrics());
    // The honest network gets at least one more judged window than the attacked one needed.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let m = honest.mailbox.r().metrics();
    assert!(m.loops_sent > 20, "loop cover is on by default: {m:?}");
    assert!(m.cover_received > 20, "and the loops return: {m:?}");
    assert_eq!(alarms(&honest), 0, "an honest network raises no alarm");
    honest.shutdown().await;
    attacked.shutdown().await;
}

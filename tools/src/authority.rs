//! The `spore directory` commands' glue: descriptor and directory files, and serving the
//! document over HTTP. Building, signing, verifying and describing a directory are pure and
//! live in [`spore_protocol::directory`] (re-exported here for the commands).
//!
//! Several authorities sign the same document independently ([`add_signature`]); a reader
//! accepts it when enough of the authorities it trusts have signed ([`verify`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use spore_protocol::directory::{Directory, RelayDescriptor, Trust};

use crate::keyfile::write_atomic;

/// Reads a descriptor written by `spore-relay descriptor` (binary, or hex text).
pub fn read_descriptor(path: &Path) -> Result<RelayDescriptor> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = match std::str::from_utf8(&raw) {
        Ok(text) if hex::decode(text.trim()).is_ok() => hex::decode(text.trim())?,
        _ => raw,
    };
    RelayDescriptor::from_bytes(&bytes)
        .with_context(|| format!("{} is not a relay descriptor", path.display()))
}

/// Expands directories into the descriptor files they hold (`*.desc`, `*.descriptor`).
pub fn descriptor_paths(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("desc" | "descriptor")
                    )
                })
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

pub use spore_protocol::directory::build;

/// A human summary of a directory document, for `spore directory show` and `spore inspect`.
/// Relay ids and authority keys are printed in full (64 hex digits): configs and
/// `spore keygen mailbox --relay` need all 32 bytes, so a shortened id would be useless there.
pub fn describe(dir: &Directory) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let p = &dir.params;
    let _ = writeln!(
        s,
        "epoch {}  valid {}..{}  {} relays  {} signature(s)",
        dir.epoch,
        dir.valid_after,
        dir.valid_until,
        dir.relays.len(),
        dir.signatures.len()
    );
    let _ = writeln!(
        s,
        "params: mu={} /s (mean {:.1} ms/hop)  lambda_p={} lambda_l={} lambda_d={} lambda_m={}  packet={} B  epoch={} s  max_delay={} ms  pull={} ms",
        p.mu,
        1000.0 / p.mu,
        p.lambda_p,
        p.lambda_l,
        p.lambda_d,
        p.lambda_m,
        p.packet_size,
        p.epoch_length_secs,
        p.max_delay_ms,
        p.pull_interval_ms
    );
    for r in &dir.relays {
        let roles: Vec<&str> = [
            (r.roles.entry, "entry"),
            (r.roles.mix, "mix"),
            (r.roles.mailbox, "mailbox"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let _ = writeln!(
            s,
            "  relay {}  {:<21}  {:<18} layer {}  keys for epochs {:?}",
            hex::encode(r.id.as_bytes()),
            r.address,
            roles.join("+"),
            r.layer,
            r.sphinx_keys.iter().map(|k| k.epoch).collect::<Vec<_>>()
        );
    }
    for sig in &dir.signatures {
        let _ = writeln!(s, "  signed by authority {}", hex::encode(sig.authority));
    }
    s
}

/// Adds `key`'s signature to an existing document (a second authority co-signing).
pub fn add_signature(dir: &mut Directory, key: &SigningKey) -> Result<()> {
    dir.sign(key)?;
    Ok(())
}

/// Threshold verification, as relays and clients do it.
pub fn verify(dir: &Directory, trusted: &[[u8; 32]], threshold: usize, now: u64) -> Result<()> {
    dir.verify(trusted, threshold, now)?;
    Ok(())
}

pub fn write(dir: &Directory, path: &Path) -> Result<()> {
    write_atomic(path, &dir.to_bytes())
}

pub fn read(path: &Path) -> Result<Directory> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Directory::from_bytes(&bytes).with_context(|| format!("{} is not a directory", path.display()))
}

/// Serves the directory file over HTTP (`GET /directory`) until `shutdown` resolves.
/// The file is re-read per request so a freshly signed document is served at once.
pub async fn serve(
    file: PathBuf,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::service::service_fn;
    use hyper::{Response, StatusCode};

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let file = Arc::new(file);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            () = &mut shutdown => return Ok(()),
        };
        let file = Arc::clone(&file);
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let file = Arc::clone(&file);
                async move {
                    let resp = if req.uri().path() == "/directory" {
                        match tokio::fs::read(&*file).await {
                            Ok(b) => Response::new(Full::new(Bytes::from(b))),
                            Err(_) => {
                                let mut r = Response::new(Full::new(Bytes::from_static(
                                    b"no directory yet",
                                )));
                                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                r
                            }
                        }
                    } else {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// Parses authority public keys given as hex on the command line (the configs' rule).
pub fn parse_authorities(hex_keys: &[String]) -> Result<Vec<[u8; 32]>> {
    if hex_keys.is_empty() {
        bail!("at least one --authority key is required");
    }
    Ok(Trust::from_hex(hex_keys, hex_keys.len())?.authorities)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spore_protocol::directory::{DescriptorFields, NetworkParams, Roles, SphinxKey};

    fn descriptor(now: u64) -> RelayDescriptor {
        RelayDescriptor::sign(
            DescriptorFields {
                address: "127.0.0.1:4000".into(),
                roles: Roles {
                    entry: true,
                    mix: false,
                    mailbox: true,
                },
                layer: 0,
                link_key: [1; 32],
                sphinx_keys: vec![SphinxKey {
                    epoch: now / 3600,
                    public: [2; 32],
                }],
                published_at: now,
                expires_at: now + 7200,
            },
            &SigningKey::from_bytes(&[9; 32]),
        )
        .unwrap()
    }

    #[test]
    fn built_directory_verifies_and_survives_a_file() {
        let now = 1_800_000_000;
        let a = SigningKey::from_bytes(&[1; 32]);
        let b = SigningKey::from_bytes(&[2; 32]);
        let mut dir = build(
            vec![descriptor(now)],
            NetworkParams::default(),
            &a,
            now,
            3600,
        )
        .unwrap();
        let trusted = [a.verifying_key().to_bytes(), b.verifying_key().to_bytes()];
        assert!(verify(&dir, &trusted, 2, now + 1).is_err());
        add_signature(&mut dir, &b).unwrap();
        verify(&dir, &trusted, 2, now + 1).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("directory.bin");
        write(&dir, &path).unwrap();
        assert_eq!(read(&path).unwrap(), dir);
        let shown = describe(&dir);
        assert!(shown.contains("entry+mailbox"));
        // Full ids and keys, as configs need them, not 12-hex prefixes.
        assert!(
            shown.contains(&hex::encode(dir.relays[0].id.as_bytes())),
            "{shown}"
        );
        assert!(
            shown.contains(&hex::encode(a.verifying_key().to_bytes())),
            "{shown}"
        );
        assert!(
            shown.contains(&hex::encode(b.verifying_key().to_bytes())),
            "{shown}"
        );
    }

    #[test]
    fn expired_descriptor_is_refused_by_name() {
        let now = 1_800_000_000;
        let err = build(
            vec![descriptor(now)],
            NetworkParams::default(),
            &SigningKey::from_bytes(&[1; 32]),
            now + 10_000,
            3600,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("does not verify"));
    }

    #[tokio::test]
    async fn serves_the_current_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d.bin");
        std::fs::write(&path, b"doc-bytes").unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(path, addr, async move {
            let _ = rx.await;
        }));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /directory HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("doc-bytes"));
        let _ = tx.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn relays_and_clients_fetch_what_it_serves() {
        use spore_relay::DirectorySource;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d.bin");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(path.clone(), addr, async move {
            let _ = rx.await;
        }));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let source = DirectorySource::Http(format!("http://{addr}/directory"));
        assert_eq!(source.fetch().await.unwrap(), None, "503: no directory yet");
        std::fs::write(&path, b"doc-bytes").unwrap();
        assert_eq!(source.fetch().await.unwrap(), Some(b"doc-bytes".to_vec()));
        let _ = tx.send(());
        server.await.unwrap().unwrap();
    }
}

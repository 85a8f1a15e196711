//! A `spore-sidecar` config for one node of a [`Testnet`], written as the binary reads it:
//! the whole-network tests and the `spore-testnet` binary write it here and nowhere else.

use std::path::{Path, PathBuf};

use spore_protocol::{MailboxKey, RelayId, SporeAddress};

use crate::Testnet;

/// One sidecar's identity, where it listens and delivers, and its settings.
#[derive(Debug, Clone)]
pub struct SidecarNode<'a> {
    pub name: &'a str,
    pub mailbox_relay: RelayId,
    /// A second mailbox relay (`second_mailbox_relay`): the address then names both.
    pub second_mailbox_relay: Option<RelayId>,
    pub key: &'a MailboxKey,
    /// The homeserver's federation listener, e.g. `http://127.0.0.1:8008`.
    pub homeserver_url: &'a str,
    /// The plain HTTP outbound endpoint.
    pub listen: &'a str,
    pub https_proxy_listen: Option<&'a str>,
    pub request_timeout_secs: u64,
    /// Reply SURBs per request/response call; `None`: the sidecar's default.
    pub reply_surbs: Option<usize>,
    pub rates: SidecarRates,
    /// Other homeservers by server name, and their Spore addresses.
    pub peers: &'a [(&'a str, &'a SporeAddress)],
}

/// Packets per second of the sidecar's send streams (real or cover, loops, drops).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SidecarRates {
    pub lambda_p: f64,
    pub lambda_l: f64,
    pub lambda_d: f64,
}

impl<'a> SidecarNode<'a> {
    /// A node with the whole-network tests' settings: fast rates (100 packets/s, loops and
    /// drops 5/s), a 30 s request timeout, the outbound endpoint on `127.0.0.1:0`, no HTTPS
    /// proxy and no peers.
    pub fn new(
        name: &'a str,
        mailbox_relay: RelayId,
        key: &'a MailboxKey,
        homeserver_url: &'a str,
    ) -> Self {
        Self {
            name,
            mailbox_relay,
            second_mailbox_relay: None,
            key,
            homeserver_url,
            listen: "127.0.0.1:0",
            https_proxy_listen: None,
            request_timeout_secs: 30,
            reply_surbs: None,
            rates: SidecarRates {
                lambda_p: 100.0,
                lambda_l: 5.0,
                lambda_d: 5.0,
            },
            peers: &[],
        }
    }

    /// The TOML text, trusting `net`'s directory; the key is read from `mailbox.key` next to
    /// it and data goes to `data/`.
    fn toml(&self, net: &Testnet) -> String {
        let mut text = format!(
            "server_name = \"{}\"\ndata_dir = \"data\"\nmailbox_key_file = \"mailbox.key\"\n\
             mailbox_relay = \"{}\"\nhomeserver_url = \"{}\"\nlisten = \"{}\"\n",
            self.name, self.mailbox_relay, self.homeserver_url, self.listen
        );
        if let Some(second) = self.second_mailbox_relay {
            text.push_str(&format!("second_mailbox_relay = \"{second}\"\n"));
        }
        if let Some(proxy) = self.https_proxy_listen {
            text.push_str(&format!("https_proxy_listen = \"{proxy}\"\n"));
        }
        text.push_str(&format!(
            "request_timeout_secs = {}\n",
            self.request_timeout_secs
        ));
        if let Some(n) = self.reply_surbs {
            text.push_str(&format!("reply_surbs = {n}\n"));
        }
        let SidecarRates {
            lambda_p,
            lambda_l,
            lambda_d,
        } = self.rates;
        text.push_str(&format!(
            "\n[directory]\npath = \"{}\"\nauthorities = [\"{}\"]\nthreshold = 1\n\n\
             [rates]\nlambda_p = {lambda_p:?}\nlambda_l = {lambda_l:?}\nlambda_d = {lambda_d:?}\n\
             mu = 1000.0\npull_interval_ms = 50\n\n[peers]\n",
            net.directory_path().display(),
            hex::encode(net.authority()),
        ));
        for (peer, address) in self.peers {
            text.push_str(&format!("\"{peer}\" = \"{}\"\n", address.to_text()));
        }
        text
    }
}

impl Testnet {
    /// Writes `node`'s mailbox key and `sidecar.toml` under `dir` (created if missing) and
    /// returns the config's path, for `spore-sidecar run --config` or `SidecarConfig::load`.
    pub fn write_sidecar_config(
        &self,
        dir: &Path,
        node: &SidecarNode<'_>,
    ) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("mailbox.key"),
            hex::encode(node.key.secret_bytes()),
        )?;
        let path = dir.join("sidecar.toml");
        std::fs::write(&path, node.toml(self))?;
        Ok(path)
    }
}

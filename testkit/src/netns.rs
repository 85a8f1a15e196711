//! Hosts of their own for multi-host tests: Linux network namespaces joined by veth pairs to a
//! bridge, each host with its own private address.
//!
//! Every namespace this module creates is named `spore-mh<pid>-...`: a hub namespace holding
//! the bridge `br0`, and one namespace per host whose `eth0` (the far end of a veth pair whose
//! near end is a port of `br0`) has `10.77.0.<2 + i>/24`. Nothing is created in the namespace
//! the test runs in: no interface, route or address of the machine changes, and deleting the
//! namespaces removes every link with them. [`NetnsHosts`] deletes them (after SIGKILLing
//! whatever still runs inside) when dropped, so a failing test cleans up while it unwinds;
//! [`sweep_stale`] removes what a run killed before it could unwind (SIGKILL, power loss) left
//! behind, by the prefix and a pid that no longer runs.
//!
//! Needs root and iproute2's `ip`; [`unavailable_reason`] says why a test cannot run.
//!
//! ```no_run
//! # fn demo() -> Result<(), spore_testkit::netns::NetnsError> {
//! use spore_testkit::netns::{NetnsHosts, sweep_stale};
//!
//! sweep_stale();
//! let hosts = NetnsHosts::create(2)?;
//! // Host 1 pings host 0 over the bridge; the namespaces go away with `hosts`.
//! let status = hosts
//!     .command(1, "ping")
//!     .args(["-c", "1", &hosts.address(0).to_string()])
//!     .status();
//! # let _ = status; Ok(()) }
//! ```

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// What every namespace this module creates is named like, followed by the creator's pid.
pub const PREFIX: &str = "spore-mh";

/// The hosts' subnet: host `i` is `10.77.0.<2 + i>`, on a bridge of its own.
pub const SUBNET: [u8; 3] = [10, 77, 0];

/// At most this many hosts (the /24 minus network, bridge and broadcast addresses).
pub const MAX_HOSTS: usize = 250;

/// Why namespaces could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot run `ip`: {0}")]
    Spawn(std::io::Error),
    #[error("{0} hosts asked for, at most {MAX_HOSTS}")]
    TooMany(usize),
}

/// Why namespaces cannot be used here (not root, no `ip`, `ip netns` refused), or `None`.
pub fn unavailable_reason() -> Option<String> {
    match std::fs::read_to_string("/proc/self/status") {
        Ok(status) => {
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(str::to_owned);
            if uid.as_deref() != Some("0") {
                return Some(format!(
                    "network namespaces need root (effective uid {})",
                    uid.unwrap_or_else(|| "unknown".into())
                ));
            }
        }
        Err(e) => return Some(format!("cannot read /proc/self/status: {e}")),
    }
    match Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("iproute2's `ip` cannot be run: {e}")),
    }
}

fn ip<I, S>(args: I) -> Result<(), NetnsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(NetnsError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The namespaces that exist now.
fn list_namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                // "name (id: 3)" or just "name"
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process in namespace `name`, then deletes it (and with it its links).
fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = ip(["netns", "del", name]);
}

/// Deletes the namespaces that earlier runs of this module left behind (their creator's pid
/// no longer runs) and returns their names.
pub fn sweep_stale() -> Vec<String> {
    let mut swept = Vec::new();
    for name in list_namespaces() {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        let alive = !pid.is_empty() && std::path::Path::new("/proc").join(pid).exists();
        if !alive {
            remove_namespace(&name);
            swept.push(name);
        }
    }
    swept
}

/// `n` hosts in namespaces of their own on one bridge; deleted, with everything still running
/// in them, when dropped.
#[derive(Debug)]
pub struct NetnsHosts {
    hub: String,
    hosts: Vec<String>,
}

impl NetnsHosts {
    /// Creates the hub with its bridge and `n` hosts plugged into it, each with loopback and
    /// `eth0` up. On error whatever was created is deleted again.
    pub fn create(n: usize) -> Result<Self, NetnsError> {
        if n > MAX_HOSTS {
            return Err(NetnsError::TooMany(n));
        }
        let base = format!("{PREFIX}{}", std::process::id());
        // A second set in the same process gets names of its own.
        static SETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let set = SETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hub = format!("{base}-{set}-hub");
        ip(["netns", "add", &hub])?;
        let mut made = Self {
            hub,
            hosts: Vec::new(),
        };
        made.plug_bridge()?;
        for i in 0..n {
            let name = format!("{base}-{set}-h{i}");
            ip(["netns", "add", &name])?;
            made.hosts.push(name);
            made.plug_host(i)?;
        }
        Ok(made)
    }

    fn plug_bridge(&self) -> Result<(), NetnsError> {
        let hub = self.hub.as_str();
        ip(["-n", hub, "link", "set", "lo", "up"])?;
        ip(["-n", hub, "link", "add", "br0", "type", "bridge"])?;
        ip(["-n", hub, "link", "set", "br0", "up"])
    }

    fn plug_host(&self, i: usize) -> Result<(), NetnsError> {
        let (hub, host) = (self.hub.as_str(), self.hosts[i].as_str());
        let port = format!("h{i}");
        ip([
            "-n", hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", host,
        ])?;
        ip(["-n", hub, "link", "set", &port, "master", "br0"])?;
        ip(["-n", hub, "link", "set", &port, "up"])?;
        ip(["-n", host, "link", "set", "lo", "up"])?;
        let addr = format!("{}/24", self.address(i));
        ip(["-n", host, "addr", "add", &addr, "dev", "eth0"])?;
        ip(["-n", host, "link", "set", "eth0", "up"])
    }

    /// How many hosts there are.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `i`'s address on the bridge.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = SUBNET;
        Ipv4Addr::new(a, b, c, u8::try_from(i + 2).unwrap_or(u8::MAX))
    }

    /// Host `i`'s namespace name.
    pub fn name(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// `program` to be run in host `i`'s namespace (`ip netns exec`, which execs it: the
    /// child's pid is the program's, so killing the child kills it).
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.hosts[i]]).arg(program);
        command
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        for name in self.hosts.iter().chain(std::iter::once(&self.hub)) {
            remove_namespace(name);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn exists(name: &str) -> bool {
        list_namespaces().iter().any(|n| n == name)
    }

    /// Root only (the multi-host test fails in CI when it cannot run; this one just skips).
    #[test]
    fn namespaces_go_away_when_a_test_panics_and_stale_ones_are_swept() {
        if let Some(why) = unavailable_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let names = std::sync::Mutex::new(Vec::new());
        let unwound = std::panic::catch_unwind(|| {
            let hosts = NetnsHosts::create(2).unwrap();
            let mut n = names.lock().unwrap();
            n.extend([
                hosts.name(0).to_owned(),
                hosts.name(1).to_owned(),
                hosts.hub.clone(),
            ]);
            drop(n);
            assert!(names.lock().unwrap().iter().all(|n| exists(n)));
            panic!("a failing test");
        });
        assert!(unwound.is_err());
        let names = names.into_inner().unwrap();
        assert_eq!(names.len(), 3);
        for n in &names {
            assert!(!exists(n), "{n} is still there");
        }

        // A namespace of a creator that no longer runs (pid 0 never names a process here).
        let stale = format!("{PREFIX}0-0-hub");
        ip(["netns", "add", &stale]).unwrap();
        assert!(sweep_stale().contains(&stale));
        assert!(!exists(&stale));
    }
}

//! The workspace binaries that process-level tests run (`spore-relay`, `spore-sidecar`,
//! `spore`), built on demand.
//!
//! `cargo test -p spore-tests` does not build other packages' binaries, so a test that runs one
//! asks here: the binary's path is found from the test executable
//! (`<target>/<profile>/deps/<test>` -> `<target>/<profile>/<name>`), and the first time a
//! process asks for a binary, `$CARGO build --bin <name>` brings it up to date (a no-op when it
//! is fresh). `cargo test --workspace` on a fresh clone therefore passes by itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// A workspace binary and the package that builds it (`None`: cargo finds it by name alone,
/// which keeps working while a binary moves between packages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkspaceBinary {
    pub name: &'static str,
    pub package: Option<&'static str>,
}

/// The relay daemon.
pub const RELAY: WorkspaceBinary = WorkspaceBinary {
    name: "spore-relay",
    package: Some("spore-relay"),
};

/// The homeserver sidecar.
pub const SIDECAR: WorkspaceBinary = WorkspaceBinary {
    name: "spore-sidecar",
    package: None,
};

/// The `spore` command.
pub const CLI: WorkspaceBinary = WorkspaceBinary {
    name: "spore",
    package: Some("spore-tools"),
};

/// The multi-host test's helper inside a namespace (delay/loss stage, stub homeserver).
pub const NETNS_AGENT: WorkspaceBinary = WorkspaceBinary {
    name: "spore-netns-agent",
    package: Some("spore-testkit"),
};

/// Why a workspace binary is not available.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BinaryError {
    #[error("cannot tell where the target directory is from the test executable: {0}")]
    NoTargetDir(String),
    #[error("`{command}` failed ({status}); build it by hand with `cargo build --bins`")]
    Build { command: String, status: String },
    #[error("{0} is missing after `cargo build`: run `cargo build --bins`")]
    Missing(PathBuf),
}

/// `<target>/<profile>`: the directory of the running test executable, without `deps`.
fn profile_dir() -> Result<PathBuf, BinaryError> {
    let exe = std::env::current_exe().map_err(|e| BinaryError::NoTargetDir(e.to_string()))?;
    let dir = exe
        .parent()
        .ok_or_else(|| BinaryError::NoTargetDir(exe.display().to_string()))?;
    Ok(if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// The cargo flags that select `profile_dir`'s profile and target directory.
fn profile_args(profile_dir: &Path) -> Vec<String> {
    let mut args = Vec::new();
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => args.push("--release".to_owned()),
        Some(other) => {
            args.push("--profile".to_owned());
            args.push(other.to_owned());
        }
    }
    if let Some(target) = profile_dir.parent() {
        args.push("--target-dir".to_owned());
        args.push(target.display().to_string());
    }
    args
}

fn build(bin: WorkspaceBinary, profile_dir: &Path) -> Result<PathBuf, BinaryError> {
    let path = profile_dir.join(bin.name);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command.args(["build", "--quiet", "--bin", bin.name]);
    match bin.package {
        Some(package) => command.args(["--package", package]),
        // In a member's folder cargo looks only at that package: ask the whole workspace.
        None => command.arg("--workspace"),
    };
    command.args(profile_args(profile_dir));
    let shown = format!("{command:?}");
    match command.status() {
        Ok(status) if status.success() => {}
        // No cargo here (the tests run outside a toolchain): use what was built before.
        Err(_) if path.exists() => return Ok(path),
        Ok(status) => {
            return Err(BinaryError::Build {
                command: shown,
                status: status.to_string(),
            });
        }
        Err(e) => {
            return Err(BinaryError::Build {
                command: shown,
                status: e.to_string(),
            });
        }
    }
    if path.exists() {
        Ok(path)
    } else {
        Err(BinaryError::Missing(path))
    }
}

/// The path of `bin`, built (or brought up to date) once per process.
pub fn workspace_binary(bin: WorkspaceBinary) -> Result<PathBuf, BinaryError> {
    type Built = Mutex<HashMap<WorkspaceBinary, Result<PathBuf, BinaryError>>>;
    static BUILT: OnceLock<Built> = OnceLock::new();
    let built = BUILT.get_or_init(Built::default);
    // One build at a time: concurrent cargo runs on one target directory would only queue on
    // its lock anyway.
    let mut built = built
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(result) = built.get(&bin) {
        return result.clone();
    }
    let result = profile_dir().and_then(|dir| build(bin, &dir));
    built.insert(bin, result.clone());
    result
}

/// [`workspace_binary`] for tests: panics with the reason when the binary cannot be had.
pub fn require(bin: WorkspaceBinary) -> PathBuf {
    match workspace_binary(bin) {
        Ok(path) => path,
        Err(e) => panic!("{} is not available: {e}", bin.name),
    }
}

//! What `/proc` says about a process: CPU seconds per process, thread and thread name, resident
//! memory, and the disk bytes under a folder. Every reader returns 0 (or NaN) rather than
//! failing, so a report on a machine without `/proc` still prints.

use std::collections::BTreeMap;
use std::path::Path;

/// Clock ticks per second of `/proc/*/stat` CPU times (USER_HZ; 100 on every Linux we run).
const CLOCK_TICKS: f64 = 100.0;

/// CPU seconds (user + system) recorded in a `/proc/.../stat` file; 0 if it cannot be read.
pub fn stat_cpu_secs(stat_path: &Path) -> f64 {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return 0.0;
    };
    // The command name may hold spaces and parentheses: fields start after the last ") ".
    let Some((_, after)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 (utime) and 15 (stime) of proc(5), counted from the state field (3).
    (ticks(11) + ticks(12)) / CLOCK_TICKS
}

/// CPU seconds used so far by this thread.
pub fn thread_cpu_secs() -> f64 {
    stat_cpu_secs(Path::new("/proc/thread-self/stat"))
}

/// CPU seconds used so far by process `pid` (all threads).
pub fn process_cpu_secs(pid: u32) -> f64 {
    stat_cpu_secs(&Path::new("/proc").join(pid.to_string()).join("stat"))
}

/// CPU seconds used so far by the threads of `pid` whose name starts with `prefix`.
pub fn threads_cpu_secs(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim().starts_with(prefix))
        })
        .map(|t| stat_cpu_secs(&t.path().join("stat")))
        .sum()
}

/// CPU seconds used so far by the threads of `pid`, summed per thread name with trailing
/// digits and dashes removed (`sphinx-0` and `sphinx-1` count as `sphinx`).
pub fn thread_groups_cpu_secs(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let group = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            .to_owned();
        *out.entry(group).or_insert(0.0) += stat_cpu_secs(&t.path().join("stat"));
    }
    out
}

/// Resident memory of process `pid` in MB (`VmRSS`), NaN if unknown.
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Bytes of all files under `dir`.
pub fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

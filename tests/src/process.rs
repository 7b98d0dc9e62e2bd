//! Watching and killing the processes a test starts, and their children,
//! through `/proc` (Linux): the chaos suite kills stages the conductor
//! started and measures the peak memory of the ingest binary.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How a waited-for child ended, with its peak resident memory.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The kernel's `ru_maxrss` for the child: an upper bound of its peak
    /// resident memory, not the peak itself, since Linux starts it from
    /// this process's size at the spawn (see `progress::memory`; the stages
    /// print their own, read with `progress::parse_peak`).
    pub max_rss_bytes: u64,
    pub wall: Duration,
}

/// Waits for `child` at most `timeout`; on timeout kills it (SIGKILL), reaps
/// it and returns `None`. Reaps with `wait4`, which reports this child's
/// `ru_maxrss` (not the whole test process's children's, as `getrusage`
/// would: tests run in parallel threads).
pub fn wait_with_peak(child: &mut Child, timeout: Duration) -> std::io::Result<Option<Finished>> {
    let started = Instant::now();
    let pid = child.id() as libc::pid_t;
    loop {
        if let Some(finished) = wait4(pid, true, started)? {
            return Ok(Some(finished));
        }
        if started.elapsed() > timeout {
            child.kill()?;
            wait4(pid, false, started)?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[allow(unsafe_code)]
fn wait4(pid: libc::pid_t, no_hang: bool, started: Instant) -> std::io::Result<Option<Finished>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain old data, for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if no_hang { libc::WNOHANG } else { 0 };
    // SAFETY: both pointers are to live locals of the types wait4 writes;
    // `pid` is our own unreaped child (std's `Child` never reaps behind our back).
    let reaped = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
    match reaped {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(None),
        _ => Ok(Some(Finished {
            status: ExitStatus::from_raw(status),
            // Linux reports ru_maxrss in KiB.
            max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
            wall: started.elapsed(),
        })),
    }
}

/// Sends SIGKILL to any process (a grandchild: a stage the conductor started).
#[allow(unsafe_code)]
pub fn kill9(pid: u32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The direct children of `pid` (every thread's), from `/proc`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out: Vec<u32> = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| text.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Every descendant of `pid`, children first.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = children(pid);
    let mut at = 0;
    while at < out.len() {
        let more = children(out[at]);
        out.extend(more);
        at += 1;
    }
    out
}

/// The process's command name (the executable's, cut to 15 bytes).
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim_end().to_owned())
}

/// Whether the process exists and has not exited (a zombie has exited).
pub fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the parenthesised command name, which may hold spaces.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X' | 'x'))
}

//! A stage's peak memory, reported by the stage itself.
//!
//! A parent cannot measure it: `wait4`'s `ru_maxrss` for a child starts
//! from the parent's own resident size at `fork` (Linux carries the old
//! address space's high-water mark across `exec`), so a 400 MB test process
//! sees 400 MB for `/bin/true`. `VmHWM` read by the program itself counts
//! its own address space only. Each stage binary prints [`report_peak`] as
//! it ends; tests and benchmarks read the line back with [`parse_peak`].

/// How the line starts.
pub const PEAK_PREFIX: &str = "peak resident memory: ";

/// This process's peak resident memory in KiB (Linux `VmHWM`); `None`
/// where `/proc` cannot tell.
pub fn peak_resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Prints `peak resident memory: N KiB` on stderr (nothing where `/proc`
/// cannot tell).
pub fn report_peak() {
    if let Some(kib) = peak_resident_kib() {
        eprintln!("{PEAK_PREFIX}{kib} KiB");
    }
}

/// The KiB of the last [`report_peak`] line in a program's output.
pub fn parse_peak(output: &str) -> Option<u64> {
    output.lines().rev().find_map(|l| l.trim().strip_prefix(PEAK_PREFIX)?.strip_suffix(" KiB")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_line_reads_back_and_grows_with_use() {
        let before = peak_resident_kib().expect("Linux has /proc/self/status");
        // Touch 64 MiB so the high-water mark must rise.
        let block = vec![1u8; 64 << 20];
        assert!(block.iter().step_by(4096).all(|&b| b == 1));
        let after = peak_resident_kib().unwrap();
        assert!(after >= before + 60 * 1024, "{before} KiB -> {after} KiB");
        let output = format!("[ingest] done\n{PEAK_PREFIX}{after} KiB\n");
        assert_eq!(parse_peak(&output), Some(after));
        assert_eq!(parse_peak("nothing here"), None);
    }
}

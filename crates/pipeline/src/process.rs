//! Running a stage's binary with its output in a log. The stage runs in
//! its own process group and dies with the conductor: a parent-death signal
//! covers the conductor being killed (SIGKILL included), and
//! [`stop_stages_on_signal`] makes SIGINT and SIGTERM kill the running
//! stage's group before the conductor exits.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use crate::Stage;

/// Why a stage's run did not give its output.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("cannot create its log {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {} (build the stage binaries first)", program.display())]
    Start {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost track of {}", program.display())]
    Wait {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("exit code {0}")]
    Exit(i32),
    #[error("killed by {0}")]
    Killed(ExitStatus),
    #[error("it exited successfully but wrote no {0}")]
    NoProduct(&'static str),
}

impl Failure {
    /// The failure with its causes, on one line (for `run.json`).
    pub fn describe(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            text += &format!(": {e}");
            cause = e.source();
        }
        text
    }
}

/// Runs `program args`, its stdout and stderr into `log` (and echoed to
/// stderr, prefixed `[stage]`). `Err` says how it ended.
pub(crate) fn run_logged(
    program: &Path,
    args: &[OsString],
    log: &Path,
    stage: Stage,
    echo: bool,
) -> Result<(), Failure> {
    let mut file = std::fs::File::create(log).map_err(|source| Failure::Log { path: log.to_owned(), source })?;
    let _ = writeln!(file, "$ {}", command_line(program, args));
    let file = Arc::new(Mutex::new(file));
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    die_with_parent(&mut command);
    let mut child = command.spawn().map_err(|source| Failure::Start { program: program.to_owned(), source })?;
    let group = i32::try_from(child.id()).unwrap_or(0);
    RUNNING_GROUP.store(group, Ordering::SeqCst);
    let pipes: Vec<Box<dyn std::io::Read + Send>> =
        vec![Box::new(child.stdout.take().expect("piped")), Box::new(child.stderr.take().expect("piped"))];
    let copiers: Vec<_> = pipes
        .into_iter()
        .map(|pipe| {
            let file = Arc::clone(&file);
            let prefix = format!("[{stage}] ");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                    let text = String::from_utf8_lossy(&line);
                    let _ = writeln!(file.lock().expect("log lock"), "{text}");
                    if echo {
                        eprintln!("{prefix}{text}");
                    }
                }
            })
        })
        .collect();
    let status = child.wait();
    RUNNING_GROUP.store(0, Ordering::SeqCst);
    let status = status.map_err(|source| Failure::Wait { program: program.to_owned(), source })?;
    for copier in copiers {
        let _ = copier.join();
    }
    match (status.success(), status.code()) {
        (true, _) => Ok(()),
        (false, Some(code)) => Err(Failure::Exit(code)),
        (false, None) => Err(Failure::Killed(status)),
    }
}

/// The process group of the stage running now (its pid), 0 when none.
static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);

/// Asks the kernel to SIGKILL the child when the conductor dies, however it
/// dies, so a stage never writes into the store after its conductor is gone.
fn die_with_parent(command: &mut Command) {
    // SAFETY: getpid before the fork; after it, the closure only makes
    // async-signal-safe system calls (prctl, getppid) and allocates nothing.
    let conductor = std::process::id();
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The conductor died before the signal was armed.
            if u32::try_from(libc::getppid()).ok() != Some(conductor) {
                return Err(std::io::Error::other("the conductor is gone"));
            }
            Ok(())
        });
    }
}

/// Makes SIGINT (Ctrl-C) and SIGTERM kill the running stage's process group
/// and end the conductor with a message and exit code 128 + the signal.
/// For the `pipeline` binary; a library caller keeps its own handlers.
pub fn stop_stages_on_signal() {
    extern "C" fn on_signal(signal: libc::c_int) {
        let group = RUNNING_GROUP.load(Ordering::SeqCst);
        let message: &[u8] = match signal {
            libc::SIGINT => b"\npipeline: interrupted (SIGINT); the running stage was stopped\n",
            _ => b"\npipeline: terminated (SIGTERM); the running stage was stopped\n",
        };
        // SAFETY: kill, write and _exit are async-signal-safe; the message
        // is a static buffer.
        #[allow(unsafe_code)]
        unsafe {
            if group > 0 {
                libc::kill(-group, libc::SIGKILL);
            }
            libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len());
            libc::_exit(128 + signal);
        }
    }
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only makes async-signal-safe calls.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(signal, handler);
        }
    }
}

/// The command as the log shows it (for reading; the program gets the
/// arguments as they are).
fn command_line(program: &Path, args: &[OsString]) -> String {
    let mut line = program.display().to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&Path::new(arg).display().to_string());
    }
    line
}

/// The last `lines` lines of a log ("" if it cannot be read).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_a_failure_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let missing = dir.path().join("no-such-stage");
        let failure = run_logged(&missing, &[], &log, Stage::Head, false).unwrap_err();
        assert!(matches!(failure, Failure::Start { .. }), "{failure:?}");
        let text = failure.describe();
        assert!(text.contains("no-such-stage") && text.contains("No such file"), "{text}");
        assert!(std::fs::read_to_string(&log).unwrap().starts_with("$ "), "the log has the command line");
        let failure = run_logged(Path::new("/bin/false"), &[], &log, Stage::Head, false).unwrap_err();
        assert_eq!(failure.describe(), "exit code 1");
    }
}

//! Advisory locks on lock files (`flock`, through the standard library):
//! held while the [`Lock`] lives, released when it is dropped or its
//! process dies, however it dies. A process that finds the lock taken says
//! so on stderr and waits. Lock files are never deleted: removing one
//! while another process waits on it would let a third take a fresh lock
//! on a new file beside the waiting one. A folder that must hold nothing
//! but its outputs can be locked itself ([`Lock::exclusive_folder`]).

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

/// A lock that could not be taken: its file and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot lock {}: {source}", path.display())]
pub struct LockError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    _file: File,
}

#[derive(Clone, Copy)]
enum Mode {
    Shared,
    Exclusive,
}

impl Lock {
    /// Takes the lock alone, waiting for every other holder. `what` names
    /// the thing it guards, for the waiting message.
    pub fn exclusive(path: &Path, what: &str) -> Result<Lock, LockError> {
        Lock::take(path, what, Mode::Exclusive)
    }

    /// Takes the lock beside other shared holders, waiting for an exclusive
    /// holder.
    pub fn shared(path: &Path, what: &str) -> Result<Lock, LockError> {
        Lock::take(path, what, Mode::Shared)
    }

    /// Takes a lock on the folder `dir` itself (created if needed), alone,
    /// waiting like [`Lock::exclusive`]: for folders where a lock file
    /// would be one file too many (a stage's output, digested whole).
    pub fn exclusive_folder(dir: &Path, what: &str) -> Result<Lock, LockError> {
        let error = |source| LockError { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(error)?;
        let folder = File::open(dir).map_err(error)?;
        Lock::hold(folder, dir, what, Mode::Exclusive)
    }

    /// Takes the lock alone if nobody holds it; `None` if somebody does.
    pub fn try_exclusive(path: &Path) -> Result<Option<Lock>, LockError> {
        let file = open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lock { path: path.to_owned(), _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(LockError { path: path.to_owned(), source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn take(path: &Path, what: &str, mode: Mode) -> Result<Lock, LockError> {
        Lock::hold(open(path)?, path, what, mode)
    }

    /// Locks the open `file` (whose path is `path`), waiting if needed.
    fn hold(file: File, path: &Path, what: &str, mode: Mode) -> Result<Lock, LockError> {
        let error = |source| LockError { path: path.to_owned(), source };
        let tried = match mode {
            Mode::Shared => file.try_lock_shared(),
            Mode::Exclusive => file.try_lock(),
        };
        match tried {
            Ok(()) => {}
            Err(TryLockError::Error(source)) => return Err(error(source)),
            Err(TryLockError::WouldBlock) => {
                eprintln!("waiting for {what}: another process holds {}", path.display());
                match mode {
                    Mode::Shared => file.lock_shared(),
                    Mode::Exclusive => file.lock(),
                }
                .map_err(error)?;
            }
        }
        Ok(Lock { path: path.to_owned(), _file: file })
    }
}

fn open(path: &Path) -> Result<File, LockError> {
    let error = |source| LockError { path: path.to_owned(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn an_exclusive_lock_excludes_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/x.lock");
        let held = Lock::exclusive(&path, "x").unwrap();
        assert!(Lock::try_exclusive(&path).unwrap().is_none(), "a second holder got in");
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                let _lock = Lock::shared(&path, "x").unwrap();
                tx.send(()).unwrap();
            })
        };
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "the shared lock did not wait");
        drop(held);
        rx.recv_timeout(Duration::from_secs(10)).expect("the waiter never got the lock");
        waiter.join().unwrap();
        assert!(Lock::try_exclusive(&path).unwrap().is_some());
    }

    #[test]
    fn shared_locks_coexist_and_keep_out_an_exclusive_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.lock");
        let a = Lock::shared(&path, "s").unwrap();
        let b = Lock::shared(&path, "s").unwrap();
        assert!(Lock::try_exclusive(&path).unwrap().is_none());
        drop((a, b));
        assert!(Lock::try_exclusive(&path).unwrap().is_some());
    }

    #[test]
    fn a_locked_folder_keeps_out_a_second_holder_and_holds_no_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let held = Lock::exclusive_folder(&target, "out").unwrap();
        let second = File::open(&target).unwrap();
        assert!(matches!(second.try_lock(), Err(TryLockError::WouldBlock)), "a second holder got in");
        drop(held);
        assert!(second.try_lock().is_ok());
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "no lock file in the folder");
    }

    #[test]
    fn an_unopenable_lock_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let err = Lock::exclusive(&dir.path().join("file/x.lock"), "x").unwrap_err();
        assert!(err.to_string().contains("file/x.lock"), "{err}");
    }
}

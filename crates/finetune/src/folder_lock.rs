//! An exclusive advisory lock on a folder itself (`flock` on the folder's
//! own descriptor), for the stage's output folders: they must hold nothing
//! but outputs (the conductor records and the golden test digests every
//! file in them), so a lock file of `atomic_file::Lock` would be one more.
//! Released when dropped or when the process dies, however it dies.

use std::fs::{File, TryLockError};
use std::path::Path;

use crate::error::{FinetuneError, Result};

/// A held folder lock.
#[derive(Debug)]
pub(crate) struct FolderLock {
    _folder: File,
}

/// Creates `dir` if needed and locks it alone; a second process says on
/// stderr that it waits for `what`, then waits.
pub(crate) fn lock_folder(dir: &Path, what: &str) -> Result<FolderLock> {
    std::fs::create_dir_all(dir).map_err(FinetuneError::io("cannot create", dir))?;
    let folder = File::open(dir).map_err(FinetuneError::io("cannot open", dir))?;
    match folder.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            eprintln!("waiting for {what}: another process holds {}", dir.display());
            folder.lock().map_err(FinetuneError::io("cannot lock", dir))?;
        }
        Err(TryLockError::Error(e)) => return Err(FinetuneError::io("cannot lock", dir)(e)),
    }
    Ok(FolderLock { _folder: folder })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_folder_keeps_out_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let held = lock_folder(&target, "out").unwrap();
        let second = File::open(&target).unwrap();
        assert!(matches!(second.try_lock(), Err(TryLockError::WouldBlock)), "a second holder got in");
        drop(held);
        assert!(second.try_lock().is_ok());
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "no lock file in the folder");
    }
}

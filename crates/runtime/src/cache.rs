use std::path::PathBuf;

use crate::{RuntimeError, TL_CACHE_DIR};

/// The project's cache folder: `$TL_CACHE_DIR` if set, else
/// `$XDG_CACHE_HOME/tl-vision`, else `~/.cache/tl-vision`. Not created here.
pub fn cache_dir() -> Result<PathBuf, RuntimeError> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    resolve_cache_dir(var(TL_CACHE_DIR), var("XDG_CACHE_HOME"), var("HOME"))
}

fn resolve_cache_dir(
    tl_cache_dir: Option<PathBuf>,
    xdg_cache_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<PathBuf, RuntimeError> {
    tl_cache_dir
        .or_else(|| xdg_cache_home.map(|dir| dir.join("tl-vision")))
        .or_else(|| home.map(|dir| dir.join(".cache").join("tl-vision")))
        .ok_or(RuntimeError::NoCacheDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_prefers_tl_cache_dir_then_xdg_then_home() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(resolve_cache_dir(p("/c"), p("/x"), p("/h")).unwrap(), PathBuf::from("/c"));
        assert_eq!(resolve_cache_dir(None, p("/x"), p("/h")).unwrap(), PathBuf::from("/x/tl-vision"));
        assert_eq!(resolve_cache_dir(None, None, p("/h")).unwrap(), PathBuf::from("/h/.cache/tl-vision"));
        assert!(resolve_cache_dir(None, None, None).is_err());
    }
}

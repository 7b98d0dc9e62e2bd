//! The head's training configuration. The type lives with the head's file
//! contract (`contracts::head`), so the conductor, `head.json` and this
//! crate share one definition and one set of defaults.

pub use contracts::head::{ClassWeights, ConfigError, HeadConfig};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A SHA-256 digest of a value's canonical JSON form, as 64 hex characters.
///
/// Canonical means `serde_json` of the value with struct fields in
/// declaration order, so two equal specs always give the same fingerprint and
/// any change to a field gives a different one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Fingerprint {
    /// The first 16 hex characters: enough to name folders readably.
    pub fn short(&self) -> &str {
        &self.0[..16]
    }
}

/// Fingerprint of any serialisable value. `domain` separates kinds of value
/// that could serialise alike (a model spec and a preprocessing spec).
pub fn fingerprint<T: Serialize + ?Sized>(domain: &str, value: &T) -> Fingerprint {
    let json = serde_json::to_vec(value).expect("specs serialise to JSON");
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0u8]);
    h.update(&json);
    Fingerprint(hex::encode(h.finalize()))
}

/// SHA-256 of bytes as lowercase hex: the content id of a file.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        // FIPS 180-2 test vector for "abc".
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn fingerprint_separates_domains_and_values() {
        let a = fingerprint("model", &(1, "x"));
        assert_eq!(a, fingerprint("model", &(1, "x")));
        assert_ne!(a, fingerprint("preprocess", &(1, "x")));
        assert_ne!(a, fingerprint("model", &(2, "x")));
        assert_eq!(a.short().len(), 16);
    }
}

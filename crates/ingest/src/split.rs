//! Split assignment: pure functions of (seed, content id, ratios).
//!
//! Each image gets a position in [0, 1) from a seeded hash of its content id,
//! and the ratios cut that interval: [0, train) is train, then validation,
//! then test. Because an image's split depends only on its own bytes and the
//! seed, it does not depend on listing order or thread count, and adding
//! images never moves existing ones. Stratification comes from applying the
//! cut within each class: every class is split by the same ratios, so
//! per-class proportions match in expectation (exactly only in the limit;
//! small classes are checked and warned about by the caller).

pub use contracts::Split;
use sha2::{Digest, Sha256};
use spec::SplitRatios;

/// The image's position in [0, 1), from the seed and its content id.
pub fn position(seed: u64, content_id: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(content_id.as_bytes());
    let digest = h.finalize();
    let top = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    // 53 bits: exactly representable in an f64.
    (top >> 11) as f64 / (1u64 << 53) as f64
}

/// The split an image with this content id falls in.
pub fn assign(seed: u64, content_id: &str, ratios: &SplitRatios) -> Split {
    let p = position(seed, content_id);
    if p < ratios.train {
        Split::Train
    } else if p < ratios.train + ratios.validation {
        Split::Validation
    } else {
        Split::Test
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: usize) -> String {
        spec::sha256_hex(&i.to_le_bytes())
    }

    #[test]
    fn proportions_follow_ratios() {
        let ratios = SplitRatios { train: 0.7, validation: 0.2, test: 0.1 };
        let mut counts = [0usize; 3];
        for i in 0..20_000 {
            counts[assign(3, &id(i), &ratios).index()] += 1;
        }
        let share = |c: usize| c as f64 / 20_000.0;
        assert!((share(counts[0]) - 0.7).abs() < 0.015, "{counts:?}");
        assert!((share(counts[1]) - 0.2).abs() < 0.015, "{counts:?}");
        assert!((share(counts[2]) - 0.1).abs() < 0.015, "{counts:?}");
    }

    #[test]
    fn seed_changes_assignment_and_extremes_are_respected() {
        let ratios = SplitRatios::default();
        let differs = (0..200).filter(|&i| assign(1, &id(i), &ratios) != assign(2, &id(i), &ratios)).count();
        assert!(differs > 20, "seed should matter, {differs} of 200 moved");
        let all_train = SplitRatios { train: 1.0, validation: 0.0, test: 0.0 };
        assert!((0..200).all(|i| assign(1, &id(i), &all_train) == Split::Train));
        let no_train = SplitRatios { train: 0.0, validation: 0.5, test: 0.5 };
        assert!((0..200).all(|i| assign(1, &id(i), &no_train) != Split::Train));
    }

    #[test]
    fn split_names_round_trip() {
        for s in Split::ALL {
            assert_eq!(s.as_str().parse::<Split>().unwrap(), s);
        }
        assert!("dev".parse::<Split>().is_err());
    }
}

//! Seeded generators, so that weights, splits, shuffles, dropout and
//! augmentation depend on the seed alone and never on a crate's version or
//! the thread count. Two generators, both built on the SplitMix64 step:
//!
//! - [`SplitMix64`]: one u64 of state; generated weights, demo images,
//!   fine-tuning's batch order and augmentation draws.
//! - [`Xoshiro256`]: xoshiro256++ seeded through SplitMix64, with
//!   independent named streams; the head's initialisation, shuffling and
//!   dropout.
//!
//! Uniform draws use only integer and IEEE arithmetic, so they are
//! bit-identical everywhere; normal draws go through the platform's `ln` and
//! `sin_cos`, which may differ in the last bit between C libraries.

/// One SplitMix64 step.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 53 random bits as a uniform f64 in [0, 1).
fn unit_f64(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// SplitMix64: one u64 of state, passes BigCrush, trivially portable.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
    /// Box-Muller makes normals in pairs; the second waits here.
    spare_normal: Option<f32>,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed, spare_normal: None }
    }

    /// A generator for one named tensor, independent of the order in which
    /// tensors are drawn.
    pub fn for_tensor(seed: u64, tensor_name: &str) -> SplitMix64 {
        // FNV-1a of the name, mixed with the seed.
        let name_hash = tensor_name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
        SplitMix64::new(seed ^ name_hash.rotate_left(17))
    }

    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }

    /// Uniform in [0, 1), with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// Uniform in [low, high).
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.next_f64() as f32
    }

    /// Uniform in `[lo, hi)` from 24 random bits; `lo` when the range is empty.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        if hi > lo {
            lo + u * (hi - lo)
        } else {
            lo
        }
    }

    /// Uniform in `0..n` (n > 0) from the high 32 bits, by multiplication.
    pub fn below_u32(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }

    /// Standard normal, by Box-Muller.
    pub fn normal(&mut self) -> f32 {
        if let Some(spare) = self.spare_normal.take() {
            return spare;
        }
        let u1 = 1.0 - self.next_f64(); // in (0, 1], so ln is finite
        let u2 = self.next_f64();
        let radius = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare_normal = Some((radius * sin) as f32);
        (radius * cos) as f32
    }

    /// He-normal weights: N(0, 2 / fan_in), right for layers followed by ReLU.
    pub fn he_normal(&mut self, fan_in: usize, count: usize) -> Vec<f32> {
        let std_dev = (2.0 / fan_in as f32).sqrt();
        (0..count).map(|_| self.normal() * std_dev).collect()
    }

    /// He-uniform weights: U(-limit, limit) with limit = sqrt(6 / fan_in),
    /// the same variance as He-normal (2 / fan_in), and bit-identical on
    /// every platform.
    pub fn he_uniform(&mut self, fan_in: usize, count: usize) -> Vec<f32> {
        let limit = (6.0 / fan_in as f64).sqrt() as f32;
        self.uniform_vec(-limit, limit, count)
    }

    /// `count` values uniform in [low, high).
    pub fn uniform_vec(&mut self, low: f32, high: f32, count: usize) -> Vec<f32> {
        (0..count).map(|_| self.uniform(low, high)).collect()
    }
}

/// xoshiro256++: fast, 256-bit state, good statistical quality.
#[derive(Clone, Debug)]
pub struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        Xoshiro256 { s }
    }

    /// An independent stream for one purpose (for example "dropout, step 12,
    /// layer 0"): the ids are folded into the seed, so streams never depend on
    /// how many numbers another stream consumed.
    pub fn stream(seed: u64, ids: &[u64]) -> Self {
        let mut h = seed;
        let mut acc = splitmix64(&mut h);
        for &id in ids {
            let mut x = acc ^ id.wrapping_mul(0xD1B5_4A32_D192_ED03);
            acc = splitmix64(&mut x);
        }
        Xoshiro256::new(acc)
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// Uniform integer in [0, n) without modulo bias (Lemire's method).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = (self.next_u64() as u128) * (n as u128);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// Standard normal (Box–Muller; the second value is discarded to keep
    /// the stream stateless beyond `s`).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // in (0, 1], so ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<X>(&mut self, items: &mut [X]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_streams_differ() {
        let a: Vec<u64> = (0..5).scan(Xoshiro256::new(7), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..5).scan(Xoshiro256::new(7), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        let mut s1 = Xoshiro256::stream(7, &[1, 2]);
        let mut s2 = Xoshiro256::stream(7, &[2, 1]);
        assert_ne!(s1.next_u64(), s2.next_u64());
    }

    #[test]
    fn uniform_and_below_stay_in_range() {
        let mut r = Xoshiro256::new(1);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            counts[r.below(3) as usize] += 1;
        }
        // Each bucket within 5% of 10,000.
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)), "{counts:?}");
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        Xoshiro256::new(3).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<u64> = (0..4).map(|_| SplitMix64::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut rng = SplitMix64::new(7);
        assert_ne!(rng.next_u64(), rng.next_u64());
    }

    #[test]
    fn he_inits_have_the_right_spread() {
        let fan_in = 50;
        for values in [SplitMix64::new(1).he_normal(fan_in, 200_000), SplitMix64::new(1).he_uniform(fan_in, 200_000)] {
            check_spread(&values, fan_in);
        }
    }

    fn check_spread(values: &[f32], fan_in: usize) {
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32;
        assert!(mean.abs() < 0.01, "mean {mean}");
        let expected = 2.0 / fan_in as f32;
        assert!((var - expected).abs() < 0.02 * expected, "var {var} vs {expected}");
    }
}

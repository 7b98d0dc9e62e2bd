//! A tiny seeded PRNG, so generated weights are the same on every machine
//! and every version of every dependency. Uniform draws use only integer
//! and IEEE arithmetic, so they are bit-identical everywhere; normal draws
//! go through the platform's `ln` and `sin_cos`, which may differ in the
//! last bit between C libraries.

/// SplitMix64: one u64 of state, passes BigCrush, trivially portable.
#[derive(Clone, Debug)]
pub struct SeededRng {
    state: u64,
    /// Box-Muller makes normals in pairs; the second waits here.
    spare_normal: Option<f32>,
}

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng { state: seed, spare_normal: None }
    }

    /// A generator for one named tensor, independent of the order in which
    /// tensors are drawn.
    pub fn for_tensor(seed: u64, tensor_name: &str) -> SeededRng {
        // FNV-1a of the name, mixed with the seed.
        let name_hash = tensor_name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
        SeededRng::new(seed ^ name_hash.rotate_left(17))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [low, high).
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.next_f64() as f32
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<u64> = (0..4).map(|_| SeededRng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut rng = SeededRng::new(7);
        assert_ne!(rng.next_u64(), rng.next_u64());
    }

    #[test]
    fn he_inits_have_the_right_spread() {
        let fan_in = 50;
        for values in [SeededRng::new(1).he_normal(fan_in, 200_000), SeededRng::new(1).he_uniform(fan_in, 200_000)] {
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

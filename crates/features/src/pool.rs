//! The conv base's output map → one stored vector. Pure.

use spec::Pooling;

/// Appends the pooled vector of one image's `[C, H, W]` map (row-major) to
/// `out`:
/// - flatten: the map as it is, index `c·H·W + y·W + x`;
/// - avg: per channel, the mean over the `H·W` positions (summed in f64);
/// - max: per channel, the largest value.
///
/// An output the graph already pooled (`[C]`) comes here as `[C, 1, 1]`,
/// on which all three are the identity.
pub fn pool_into(map: &[f32], shape: [usize; 3], pooling: Pooling, out: &mut Vec<f32>) {
    let [c, h, w] = shape;
    assert_eq!(map.len(), c * h * w, "map of {} values is not {c}x{h}x{w}", map.len());
    let plane = h * w;
    match pooling {
        Pooling::Flatten => out.extend_from_slice(map),
        Pooling::Avg => out.extend(
            map.chunks_exact(plane).map(|p| (p.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64) as f32),
        ),
        Pooling::Max => {
            out.extend(map.chunks_exact(plane).map(|p| p.iter().copied().fold(f32::NEG_INFINITY, f32::max)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_each_channel() {
        let map = [1.0, 2.0, 3.0, 6.0, -1.0, -2.0, -3.0, -4.0];
        let pooled = |p| {
            let mut out = Vec::new();
            pool_into(&map, [2, 2, 2], p, &mut out);
            out
        };
        assert_eq!(pooled(Pooling::Flatten), map);
        assert_eq!(pooled(Pooling::Avg), [3.0, -2.5]);
        assert_eq!(pooled(Pooling::Max), [6.0, -1.0]);
        assert_eq!(Pooling::Flatten.pooled_len([512, 7, 7].into()), 25_088);
        assert_eq!(Pooling::Avg.pooled_len([512, 7, 7].into()), 512);
    }

    #[test]
    fn an_already_pooled_vector_passes_through() {
        let vector = [0.5, -2.0, 7.25];
        let shape = spec::ConvShape::Pooled(3);
        for pooling in [Pooling::Flatten, Pooling::Avg, Pooling::Max] {
            let mut out = Vec::new();
            pool_into(&vector, shape.as_map(), pooling, &mut out);
            assert_eq!(out, vector, "{pooling:?}");
            assert_eq!(pooling.pooled_len(shape), 3);
        }
    }
}

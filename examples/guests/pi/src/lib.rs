//! Monte Carlo estimate of pi: each task throws darts at the unit square and counts those
//! inside the quarter circle.

use ferry_guest::prelude::*;

/// Throws `darts` darts from the random stream `seed` and returns how many land inside the
/// quarter circle.
#[remote]
pub fn sample(seed: u64, darts: u64) -> u64 {
    let mut rng = SplitMix64(seed);
    let mut inside = 0;
    for _ in 0..darts {
        let x = rng.unit();
        let y = rng.unit();
        if x * x + y * y <= 1.0 {
            inside += 1;
        }
    }
    inside
}

/// SplitMix64, a small, good-quality generator (enough for sampling).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float in [0, 1) from the top 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

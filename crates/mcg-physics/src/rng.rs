//! Seeded, reproducible random streams.
//!
//! Every random number in the project comes from a stream named by a master seed, a purpose
//! and an index (for example the image number). Streams are independent of one another and of
//! the order and thread in which they are drawn, so a data set is the same bit for bit whatever
//! the thread count.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// The generator behind every stream.
pub type StreamRng = ChaCha8Rng;

/// The generator for bulk draws (a noise image needs N² normal numbers): Xoshiro256++, a
/// fixed, portable algorithm several times faster per number than ChaCha8.
pub type BulkRng = Xoshiro256PlusPlus;

/// What a stream is used for; part of its identity so that, say, noise never reuses the
/// numbers that drew the poses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Poses of simulated particles.
    Pose,
    /// Shifts of simulated particles.
    Shift,
    /// CTF parameters of simulated particles.
    Ctf,
    /// Additive noise.
    Noise,
    /// Images drawn to estimate the signal variance for an SNR.
    Calibration,
    /// Conformations of simulated particles.
    Conformation,
    /// The noise of pure-background images (patches without a particle).
    BackgroundNoise,
    /// Anything else, with a caller-chosen tag.
    Other(u32),
}

impl Purpose {
    fn tag(self) -> u64 {
        match self {
            Purpose::Pose => 1,
            Purpose::Shift => 2,
            Purpose::Ctf => 3,
            Purpose::Noise => 4,
            Purpose::Calibration => 5,
            Purpose::Conformation => 6,
            Purpose::BackgroundNoise => 7,
            Purpose::Other(t) => 0x1_0000_0000 | u64::from(t),
        }
    }
}

/// The stream for `(seed, purpose, index)`.
pub fn stream(seed: u64, purpose: Purpose, index: u64) -> StreamRng {
    let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(seed ^ splitmix64(purpose.tag())));
    rng.set_stream(index);
    rng
}

/// A fast generator for bulk draws with the identity `(seed, purpose, index)`: seeded from
/// [`stream`], so it is as reproducible and as independent of other identities.
pub fn bulk_stream(seed: u64, purpose: Purpose, index: u64) -> BulkRng {
    let mut key = [0u8; 32];
    stream(seed, purpose, index).fill_bytes(&mut key);
    Xoshiro256PlusPlus::from_seed(key)
}

/// A well-mixed 64-bit child seed, for deriving the seeds of independent parts (shards) of a job.
pub fn derive_seed(seed: u64, part: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ part.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn same_identity_same_numbers() {
        let a: Vec<u64> = (0..8)
            .map(|_| 0)
            .scan(stream(5, Purpose::Noise, 9), |r, _| Some(r.random()))
            .collect();
        let b: Vec<u64> = (0..8)
            .map(|_| 0)
            .scan(stream(5, Purpose::Noise, 9), |r, _| Some(r.random()))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn identities_differ() {
        let first = |s, p, i| stream(s, p, i).random::<u64>();
        let base = first(5, Purpose::Noise, 9);
        assert_ne!(base, first(6, Purpose::Noise, 9));
        assert_ne!(base, first(5, Purpose::Pose, 9));
        assert_ne!(base, first(5, Purpose::Noise, 10));
        assert_ne!(derive_seed(1, 0), derive_seed(1, 1));
        let bulk = |s, p, i| bulk_stream(s, p, i).random::<u64>();
        assert_eq!(bulk(5, Purpose::Noise, 9), bulk(5, Purpose::Noise, 9));
        assert_ne!(bulk(5, Purpose::Noise, 9), bulk(5, Purpose::Noise, 10));
    }
}

//! Gold-standard half sets: a particle set's indices split at random into two halves from a
//! seed, as RELION splits a set before refining each half on its own. The FSC between the two
//! halves' independent reconstructions then measures the resolution without a ground truth
//! (`multicryogan validate`).

use mcg_physics::rng::{Purpose, stream};
use rand::Rng;

/// The stream purpose of the split, used by no other draw: the halves never reuse the numbers
/// of poses, noise or training batches drawn from the same seed.
pub const PURPOSE: Purpose = Purpose::Other(0x4A1F);

/// Splits the particle indices `0 … n − 1` into two halves at random from `seed`: disjoint,
/// together all `n`, each sorted ascending, the first holding `⌈n/2⌉` and the second `⌊n/2⌋`.
///
/// Each index draws a 64-bit key from the stream `(seed, PURPOSE, 0)` in turn; the `⌈n/2⌉`
/// smallest keys (ties broken by index) form the first half. The same `(n, seed)` always gives
/// the same halves, whatever the platform or thread count.
pub fn half_split(n: usize, seed: u64) -> [Vec<usize>; 2] {
    let mut rng = stream(seed, PURPOSE, 0);
    let mut keyed: Vec<(u64, usize)> = (0..n).map(|i| (rng.random::<u64>(), i)).collect();
    keyed.sort_unstable();
    let first_size = n.div_ceil(2);
    let mut first: Vec<usize> = keyed[..first_size].iter().map(|&(_, i)| i).collect();
    let mut second: Vec<usize> = keyed[first_size..].iter().map(|&(_, i)| i).collect();
    first.sort_unstable();
    second.sort_unstable();
    [first, second]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_halves_are_disjoint_cover_the_set_and_are_balanced_and_sorted() {
        for n in [0, 1, 2, 3, 10, 101, 1000] {
            let [a, b] = half_split(n, 7);
            assert_eq!(a.len(), n.div_ceil(2), "n = {n}");
            assert_eq!(b.len(), n / 2, "n = {n}");
            assert!(a.windows(2).all(|w| w[0] < w[1]), "sorted, n = {n}");
            assert!(b.windows(2).all(|w| w[0] < w[1]), "sorted, n = {n}");
            let mut all: Vec<usize> = a.iter().chain(&b).copied().collect();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..n).collect::<Vec<_>>(),
                "disjoint and covering, n = {n}"
            );
        }
    }

    #[test]
    fn the_split_is_deterministic_and_depends_on_the_seed() {
        assert_eq!(half_split(1000, 3), half_split(1000, 3));
        assert_ne!(half_split(1000, 3), half_split(1000, 4));
        // Random, not a pattern: about half of the first 100 particles in each half.
        let [a, _] = half_split(1000, 3);
        let low = a.iter().filter(|&&i| i < 100).count();
        assert!(
            (30..=70).contains(&low),
            "{low} of the first 100 in the first half"
        );
        let evens = a.iter().filter(|&&i| i % 2 == 0).count();
        assert!((200..=300).contains(&evens), "{evens} even indices of 500");
    }
}

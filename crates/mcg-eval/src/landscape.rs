//! Landscape metrics of a reconstructed series beyond the single-map FSC: the paper's discrete
//! probabilities read off AreaFSC against the two ends of the latent segment, the β(α) curve of
//! a continuous landscape matched against ground-truth maps, and the Wasserstein-1 distance
//! between a recovered and a true distribution of a parameter.
//!
//! Probabilities are fractions of the latent segment, so they are estimated on the midpoints
//! of `L` equal cells of [0, 1] (α = (k + ½)/L): each cell stands for 1/L of the segment. The
//! FSCCC matrix itself keeps the paper's α_m = m/L, m = 0 … L, whose first and last rows are
//! the ends this rule compares against. On the ideal 25 %/75 % landscape with L = 20, five cells
//! lie below α = 0.25 and fifteen above, so the rule returns 25 %/75 %/0 exactly.

use ndarray::Array2;

/// Which conformation a latent position belongs to by the paper's rule (section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Membership {
    /// Like the α = 0 end (AreaFSC with it above the threshold, with the α = 1 end below).
    First,
    /// Like the α = 1 end.
    Second,
    /// Neither or both.
    Transition,
}

/// The discrete probabilities of a landscape.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DiscreteProbabilities {
    /// Fraction of the cells in the α = 0 end's conformation.
    pub first: f64,
    /// Fraction in the α = 1 end's conformation.
    pub second: f64,
    /// Fraction in transition.
    pub transition: f64,
    /// Each cell's membership, in order of α.
    pub membership: Vec<Membership>,
}

/// The paper's rule: cell `n` belongs to the first conformation if
/// `to_first[n] > threshold` and `to_second[n] < threshold`, to the second if the reverse, and
/// is a transition otherwise. `to_first[n]` and `to_second[n]` are the AreaFSC of cell `n`'s map
/// with the α = 0 and α = 1 ends (the paper's `M[0, n]` and `M[L, n]`, threshold 0.5).
///
/// # Panics
/// If the two slices differ in length or are empty.
pub fn discrete_probabilities(
    to_first: &[f64],
    to_second: &[f64],
    threshold: f64,
) -> DiscreteProbabilities {
    assert_eq!(to_first.len(), to_second.len(), "one AreaFSC per cell");
    assert!(!to_first.is_empty(), "at least one cell");
    let membership: Vec<Membership> = to_first
        .iter()
        .zip(to_second)
        .map(|(&a, &b)| {
            if a > threshold && b < threshold {
                Membership::First
            } else if a < threshold && b > threshold {
                Membership::Second
            } else {
                Membership::Transition
            }
        })
        .collect();
    let fraction = |m: Membership| {
        membership.iter().filter(|&&x| x == m).count() as f64 / membership.len() as f64
    };
    DiscreteProbabilities {
        first: fraction(Membership::First),
        second: fraction(Membership::Second),
        transition: fraction(Membership::Transition),
        membership,
    }
}

/// The threshold of [`discrete_probabilities`] halfway between a map's AreaFSC with itself (1)
/// and the two ends' AreaFSC with each other (`ends_area`, the paper's `M[0, L]`).
///
/// The paper's 0.5 presumes two ends less alike than that. At the Hsp90 benchmark's 32³ / 5 Å
/// the two ground-truth ends (β = 0° and 20°) have an AreaFSC of 0.55 (the fixed chain B is
/// half of the mass and correlates in every shell), so at 0.5 every cell of even the ideal
/// reconstruction is a transition. Halfway keeps the rule's meaning: a cell belongs to the end
/// it is nearer to by AreaFSC, and the ideal 25/75 landscape returns 25/75/0.
pub fn midpoint_threshold(ends_area: f64) -> f64 {
    0.5 * (1.0 + ends_area)
}

/// For each reconstructed map (row of `similarity`, e.g. AreaFSC against each ground-truth
/// map), the parameter value of the most similar ground-truth map (`values[column]`): the
/// recovered β(α) curve when rows run along α.
///
/// # Panics
/// If `values` does not have one entry per column.
pub fn best_match(similarity: &Array2<f64>, values: &[f64]) -> Vec<f64> {
    assert_eq!(similarity.ncols(), values.len(), "one value per column");
    similarity
        .rows()
        .into_iter()
        .map(|row| {
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            values[best]
        })
        .collect()
}

/// The Wasserstein-1 (earth mover's) distance between the empirical distributions of `a` and
/// `b`: ∫ |F_a(x) − F_b(x)| dx, in the samples' unit. Non-finite samples are ignored; an empty
/// side gives `NaN`.
pub fn wasserstein1(a: &[f64], b: &[f64]) -> f64 {
    let sorted = |v: &[f64]| {
        let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        s.sort_unstable_by(f64::total_cmp);
        s
    };
    let (a, b) = (sorted(a), sorted(b));
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    // Walk the merged breakpoints; between two of them both CDFs are constant.
    let (mut i, mut j) = (0usize, 0usize);
    let mut total = 0.0;
    let mut x = a[0].min(b[0]);
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(&p), Some(&q)) => p.min(q),
            (Some(&p), None) => p,
            (None, Some(&q)) => q,
            (None, None) => unreachable!(),
        };
        let fa = i as f64 / a.len() as f64;
        let fb = j as f64 / b.len() as f64;
        total += (fa - fb).abs() * (next - x);
        x = next;
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
    }
    total
}

/// The mean absolute difference of two matrices of the same shape (e.g. a reconstructed FSCCC
/// and the truth's).
///
/// # Panics
/// If the shapes differ.
pub fn mean_abs_difference(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim(), "matrices of one shape");
    let n = a.len().max(1) as f64;
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / n
}

/// The cell midpoints α = (k + ½)/L, k = 0 … L − 1, on which probabilities are estimated.
pub fn cell_midpoints(cells: usize) -> Vec<f64> {
    (0..cells)
        .map(|k| (k as f64 + 0.5) / cells as f64)
        .collect()
}

/// The paper's FSCCC positions α_m = m/L, m = 0 … L.
pub fn fsccc_positions(l: usize) -> Vec<f64> {
    (0..=l).map(|m| m as f64 / l.max(1) as f64).collect()
}

/// The assignment of rows to distinct columns of `similarity` (e.g. classes × truth states by
/// AreaFSC) with the largest total: `min(rows, columns)` pairs, `result[row]` the row's
/// column or `None` (rows beyond the columns' count stay unmatched). Exhaustive when both sides
/// have at most 8 entries; beyond, greedy (the largest remaining entry first). Ties keep the
/// first assignment found (rows in order, columns in order).
pub fn best_assignment(similarity: &Array2<f64>) -> Vec<Option<usize>> {
    let (rows, cols) = similarity.dim();
    if rows <= 8 && cols <= 8 {
        let mut search = Search {
            similarity,
            pairs: rows.min(cols),
            used: vec![false; cols],
            current: vec![None; rows],
            best: (f64::NEG_INFINITY, vec![None; rows]),
        };
        search.run(0, 0, 0.0);
        return search.best.1;
    }
    let mut entries: Vec<(usize, usize)> = (0..rows)
        .flat_map(|r| (0..cols).map(move |c| (r, c)))
        .collect();
    entries.sort_by(|a, b| similarity[[b.0, b.1]].total_cmp(&similarity[[a.0, a.1]]));
    let mut out = vec![None; rows];
    let mut used = vec![false; cols];
    for (r, c) in entries {
        if out[r].is_none() && !used[c] {
            out[r] = Some(c);
            used[c] = true;
        }
    }
    out
}

/// The order of `similarity`'s items (e.g. class maps by AreaFSC, a symmetric matrix) along
/// a path that visits each once with the largest total similarity between neighbours: the
/// order of a continuum's classes. Exhaustive up to 8 items; beyond, greedy (the most similar
/// pair first, then the most similar item added at either end). Of a path and its reverse,
/// the one whose first item has the smaller index; ties keep the first path found.
///
/// # Panics
/// If `similarity` is not square.
pub fn best_path(similarity: &Array2<f64>) -> Vec<usize> {
    let n = similarity.nrows();
    assert_eq!(n, similarity.ncols(), "a square similarity");
    let mut best = if n <= 8 {
        let mut best = (f64::NEG_INFINITY, (0..n).collect::<Vec<_>>());
        let mut path = Vec::with_capacity(n);
        let mut used = vec![false; n];
        extend_path(similarity, &mut path, &mut used, 0.0, &mut best);
        best.1
    } else {
        let mut pair = (0, 1);
        for i in 0..n {
            for j in i + 1..n {
                if similarity[[i, j]] > similarity[[pair.0, pair.1]] {
                    pair = (i, j);
                }
            }
        }
        let mut path = std::collections::VecDeque::from([pair.0, pair.1]);
        while path.len() < n {
            let (front, back) = (path[0], path[path.len() - 1]);
            let mut choice = (f64::NEG_INFINITY, 0, false);
            for i in (0..n).filter(|i| !path.contains(i)) {
                for (end, at_back) in [(front, false), (back, true)] {
                    if similarity[[end, i]] > choice.0 {
                        choice = (similarity[[end, i]], i, at_back);
                    }
                }
            }
            if choice.2 {
                path.push_back(choice.1);
            } else {
                path.push_front(choice.1);
            }
        }
        path.into()
    };
    if best.len() > 1 && best[0] > best[best.len() - 1] {
        best.reverse();
    }
    best
}

/// [`best_path`]'s exhaustive search: every extension of `path` (total `total` so far).
fn extend_path(
    similarity: &Array2<f64>,
    path: &mut Vec<usize>,
    used: &mut [bool],
    total: f64,
    best: &mut (f64, Vec<usize>),
) {
    let n = used.len();
    if path.len() == n {
        // Each path is met twice, once reversed: keep the orientation that starts lower.
        if path.first() <= path.last() && total > best.0 {
            *best = (total, path.clone());
        }
        return;
    }
    for i in 0..n {
        if !used[i] {
            let gain = path.last().map_or(0.0, |&last| similarity[[last, i]]);
            used[i] = true;
            path.push(i);
            extend_path(similarity, path, used, total + gain, best);
            path.pop();
            used[i] = false;
        }
    }
}

/// [`best_assignment`]'s exhaustive search.
struct Search<'a> {
    similarity: &'a Array2<f64>,
    /// Pairs every assignment makes.
    pairs: usize,
    /// Columns taken by the rows before.
    used: Vec<bool>,
    current: Vec<Option<usize>>,
    best: (f64, Vec<Option<usize>>),
}

impl Search<'_> {
    /// Every completion from `row` on, `matched` pairs made so far with sum `total`.
    fn run(&mut self, row: usize, matched: usize, total: f64) {
        let rows = self.current.len();
        if row == rows {
            if matched == self.pairs && total > self.best.0 {
                self.best = (total, self.current.clone());
            }
            return;
        }
        for c in 0..self.used.len() {
            if !self.used[c] {
                self.used[c] = true;
                self.current[row] = Some(c);
                self.run(row + 1, matched + 1, total + self.similarity[[row, c]]);
                self.used[c] = false;
            }
        }
        // Leave this row unmatched only when the rows after it can still make every pair.
        if rows - row > self.pairs - matched {
            self.current[row] = None;
            self.run(row + 1, matched, total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_sorts_cells_by_their_similarity_to_the_ends() {
        let p = discrete_probabilities(&[0.9, 0.8, 0.6, 0.3, 0.2], &[0.2, 0.3, 0.6, 0.7, 0.9], 0.5);
        use Membership::*;
        assert_eq!(p.membership, vec![First, First, Transition, Second, Second]);
        assert_eq!((p.first, p.second, p.transition), (0.4, 0.4, 0.2));
    }

    #[test]
    fn wasserstein_of_a_shift_is_the_shift_and_of_itself_zero() {
        let a: Vec<f64> = (0..100).map(|i| i as f64 * 0.2).collect();
        let b: Vec<f64> = a.iter().map(|x| x + 1.5).collect();
        assert!((wasserstein1(&a, &b) - 1.5).abs() < 1e-12);
        assert_eq!(wasserstein1(&a, &a), 0.0);
        // Two point masses: all of the mass moves 20.
        assert!((wasserstein1(&[0.0, 0.0], &[20.0]) - 20.0).abs() < 1e-12);
        // Uneven sizes: {0, 20} against {0}: half the mass moves 20.
        assert!((wasserstein1(&[0.0, 20.0], &[0.0]) - 10.0).abs() < 1e-12);
        assert!(wasserstein1(&[], &[1.0]).is_nan());
    }

    #[test]
    fn best_match_picks_the_most_similar_column() {
        let s = Array2::from_shape_vec((2, 3), vec![0.1, 0.9, 0.3, 0.8, 0.2, 0.1]).unwrap();
        assert_eq!(best_match(&s, &[0.0, 10.0, 20.0]), vec![10.0, 0.0]);
    }

    #[test]
    fn positions() {
        assert_eq!(cell_midpoints(4), vec![0.125, 0.375, 0.625, 0.875]);
        assert_eq!(fsccc_positions(4), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }
    #[test]
    fn best_path_orders_a_shuffled_continuum() {
        // Items at positions x along a line, similarity exp(−|xᵢ − xⱼ|): the best path visits
        // them in the order of x (or its reverse), whatever order they are given in.
        let similarity_of = |x: &[f64]| {
            Array2::from_shape_fn((x.len(), x.len()), |(i, j)| (-(x[i] - x[j]).abs()).exp())
        };
        let x = [0.7, 0.1, 0.4, 0.9, 0.0, 0.55];
        // Ascending x: 4, 1, 2, 5, 0, 3; kept reversed, so that it starts at the lower index.
        assert_eq!(best_path(&similarity_of(&x)), vec![3, 0, 5, 2, 1, 4]);
        // The greedy search beyond 8 items finds the same order on a line.
        let many: Vec<f64> = (0..11).map(|i| ((i * 7) % 11) as f64 / 10.0).collect();
        let order = best_path(&similarity_of(&many));
        let along: Vec<f64> = order.iter().map(|&i| many[i]).collect();
        let increasing = along.windows(2).all(|w| w[0] < w[1]);
        let decreasing = along.windows(2).all(|w| w[0] > w[1]);
        assert!(increasing || decreasing, "{along:?}");
        assert!(order[0] < order[10], "{order:?}");
        // Trivial sizes.
        assert_eq!(best_path(&similarity_of(&[0.3])), vec![0]);
        assert_eq!(best_path(&similarity_of(&[0.3, 0.1])), vec![0, 1]);
    }

    #[test]
    fn best_assignment_maximises_the_total_of_distinct_pairs() {
        // Square: the swap wins (0.9 + 0.8 > 0.7 + 0.6).
        let s = ndarray::array![[0.7, 0.9], [0.8, 0.6]];
        assert_eq!(super::best_assignment(&s), vec![Some(1), Some(0)]);
        // More rows than columns: the row left out is the one that adds least.
        let s = ndarray::array![[0.2, 0.1], [0.9, 0.3], [0.8, 0.7]];
        assert_eq!(super::best_assignment(&s), vec![None, Some(0), Some(1)]);
        // More columns than rows: row 0 gives up its best column (0.5 + 0.95 > 0.9 + 0.3).
        let s = ndarray::array![[0.5, 0.9, 0.1], [0.4, 0.95, 0.3]];
        assert_eq!(super::best_assignment(&s), vec![Some(0), Some(1)]);
    }
}

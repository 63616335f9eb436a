//! Views of stored tensors named in checkpoint keys (`name#rows=k/n`, `name#rows=a..b`,
//! `name#T`, `name#swap`): how one stored tensor feeds several parameters (fused q/k/v) or is
//! read re-arranged.

/// A checkpoint key may name a view of a stored tensor: `name#rows=k/n` is the k-th of n equal
/// row blocks (OpenCLIP's fused q/k/v `in_proj`, FLUX's `qkv`), `name#rows=a..b` rows a to b
/// (FLUX's fused `linear1`), `name#T` a 2-D tensor stored transposed (OpenCLIP's
/// `text_projection`, applied as x·P), `name#swap` the tensor with its two halves (along the
/// first axis) swapped (BFL's final-norm shift/scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Whole,
    Rows(usize, usize),
    RowRange(usize, usize),
    Transposed,
    SwapHalves,
}

impl View {
    pub fn parse(key: &str) -> (&str, View) {
        let Some((base, view)) = key.split_once('#') else {
            return (key, View::Whole);
        };
        let parsed = match view {
            "T" => Some(View::Transposed),
            "swap" => Some(View::SwapHalves),
            v => v.strip_prefix("rows=").and_then(|r| {
                if let Some((k, n)) = r.split_once('/') {
                    Some(View::Rows(k.parse().ok()?, n.parse().ok()?))
                        .filter(|v| matches!(v, View::Rows(k, n) if k < n))
                } else {
                    let (a, b) = r.split_once("..")?;
                    Some(View::RowRange(a.parse().ok()?, b.parse().ok()?))
                        .filter(|v| matches!(v, View::RowRange(a, b) if a < b))
                }
            }),
        };
        match parsed {
            Some(v) => (base, v),
            None => (key, View::Whole),
        }
    }

    /// (first row, row count) of a row view of a tensor with `rows` rows; `None` for views
    /// that are not row ranges or do not fit.
    pub fn row_span(self, rows: usize) -> Option<(usize, usize)> {
        match self {
            View::Whole => Some((0, rows)),
            View::Rows(k, n) if rows.is_multiple_of(n) => Some((k * rows / n, rows / n)),
            View::RowRange(a, b) if b <= rows => Some((a, b - a)),
            _ => None,
        }
    }

    pub(crate) fn shape(self, stored: &[usize]) -> Vec<usize> {
        match (self, stored) {
            (View::Rows(..) | View::RowRange(..), [rows, rest @ ..]) => {
                let count = self.row_span(*rows).map_or(0, |(_, c)| c);
                std::iter::once(count).chain(rest.iter().copied()).collect()
            }
            (View::Transposed, [a, b]) => vec![*b, *a],
            _ => stored.to_vec(),
        }
    }

    pub(crate) fn apply(self, values: Vec<f32>, stored: &[usize]) -> Vec<f32> {
        match (self, stored) {
            (View::Rows(..) | View::RowRange(..), [rows, ..]) => {
                let per_row = values.len() / rows.max(&1);
                let (start, count) = self.row_span(*rows).unwrap_or((0, 0));
                values[start * per_row..(start + count) * per_row].to_vec()
            }
            (View::Transposed, [a, b]) => transpose_2d(&values, *a, *b),
            (View::SwapHalves, _) => {
                let half = values.len() / 2;
                values[half..].iter().chain(&values[..half]).copied().collect()
            }
            _ => values,
        }
    }
}

pub(crate) fn transpose_2d(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_range_and_swap_views() {
        let v: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let (base, view) = View::parse("w#rows=1..3");
        assert_eq!((base, view), ("w", View::RowRange(1, 3)));
        assert_eq!(view.shape(&[4, 3]), [2, 3]);
        assert_eq!(view.apply(v.clone(), &[4, 3]), [3., 4., 5., 6., 7., 8.]);
        assert_eq!(View::parse("w#rows=2/4").1.row_span(8), Some((4, 2)));
        assert_eq!(View::parse("w#rows=3..9").1.row_span(8), None);
        assert_eq!(View::parse("w#rows=3..2").1, View::Whole);
        let (_, swap) = View::parse("b#swap");
        assert_eq!(swap.apply(vec![1., 2., 3., 4.], &[4]), [3., 4., 1., 2.]);
    }
}

//! The bin edges of a point mass (a value that holds a real share of a
//! numeric reference): the float just below a value, and the float32
//! rounding either side of it that the point mass's bin spans.

/// The largest float below `x` (`f64::next_down`, which needs a newer
/// Rust than this crate's minimum); NaN and -inf are returned as they are.
pub fn next_down(x: f64) -> f64 {
    if x.is_nan() || x == f64::NEG_INFINITY {
        return x;
    }
    if x == 0.0 {
        return -f64::from_bits(1);
    }
    let bits = x.to_bits();
    f64::from_bits(if x > 0.0 { bits - 1 } else { bits + 1 })
}

/// Half-width of a point mass's bin around `v`: a float32 rounding of it,
/// with room to spare (float32 keeps 24 bits).
pub fn atom_tolerance(v: f64) -> f64 {
    v.abs() / 1_048_576.0
}

//! The seen-filter of a categorical reference column.

/// A Bloom filter of the values a categorical reference held beyond the
/// categories it kept (`CategoricalSpec.seen_filter`): about 10 bits and
/// 7 probes per value, so about 1 % of never-held values pass for held.
/// The probes are fixed (FNV-1a and a 64-bit mix of it, double hashing), so
/// every reader agrees with the writer.
pub struct SeenFilter;

/// Most values a seen-filter covers (12.5 MB of filter); a reference with
/// more distinct values keeps none, and its misses count as "other".
pub const SEEN_FILTER_MAX_VALUES: usize = 10_000_000;
/// Probes per value.
const SEEN_HASHES: u32 = 7;

impl SeenFilter {
    fn probes(value: &[u8], hashes: u32, bits: u64) -> impl Iterator<Item = u64> {
        let h1 = value.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        // splitmix64 finaliser of h1: a second, independent-enough hash
        let mut z = h1.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let h2 = (z ^ (z >> 31)) | 1;
        (0..u64::from(hashes)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
    }

    /// The filter bytes and probe count for `values` (empty when there are
    /// none, or more than [`SEEN_FILTER_MAX_VALUES`]).
    pub fn build<'a>(values: impl ExactSizeIterator<Item = &'a str>) -> (Vec<u8>, u32) {
        let n = values.len();
        if n == 0 || n > SEEN_FILTER_MAX_VALUES {
            return (Vec::new(), 0);
        }
        let bytes = (n * 10).div_ceil(8).max(8);
        let bits = (bytes * 8) as u64;
        let mut filter = vec![0u8; bytes];
        for v in values {
            for b in Self::probes(v.as_bytes(), SEEN_HASHES, bits) {
                filter[(b / 8) as usize] |= 1 << (b % 8);
            }
        }
        (filter, SEEN_HASHES)
    }

    /// Whether `value` may have been held (false: certainly not).
    pub fn contains(filter: &[u8], hashes: u32, value: &[u8]) -> bool {
        if filter.is_empty() || hashes == 0 {
            return true;
        }
        let bits = (filter.len() * 8) as u64;
        Self::probes(value, hashes, bits).all(|b| filter[(b / 8) as usize] & (1 << (b % 8)) != 0)
    }
}

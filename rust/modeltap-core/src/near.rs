//! A direct-mapped table of byte strings recently looked up, in front of a
//! hash map: where a column holds a few distinct values (categories), each
//! row costs one hash of its bytes and one inlined comparison, not a map
//! probe and a call to `memcmp`.

use std::hash::Hasher;

use rustc_hash::FxHasher;

/// Entries of a [`Near`] table (indexed by the top bits of a hash).
const SLOTS: usize = 256;
const SLOT_BITS: u32 = SLOTS.trailing_zeros();

/// The table: `(hash, bytes, value)` per slot; an empty slot holds
/// `usize::MAX`, a value no caller stores.
pub struct Near<'k> {
    slots: Vec<(u64, &'k [u8], usize)>,
}

impl Default for Near<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'k> Near<'k> {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        Self {
            slots: vec![(0, &[][..], usize::MAX); SLOTS],
        }
    }

    /// The hash [`get`](Self::get) and [`put`](Self::put) take.
    #[inline]
    #[must_use]
    pub fn hash(bytes: &[u8]) -> u64 {
        let mut h = FxHasher::default();
        h.write(bytes);
        h.finish()
    }

    #[inline]
    fn slot(hash: u64) -> usize {
        // The multiplicative hash's best-mixed bits are its top ones.
        usize::try_from(hash >> (64 - SLOT_BITS)).unwrap_or(0)
    }

    /// The value stored for `bytes` (of hash `hash`), if its slot holds it.
    #[inline]
    #[must_use]
    pub fn get(&self, hash: u64, bytes: &[u8]) -> Option<usize> {
        let (h, key, value) = self.slots[Self::slot(hash)];
        (value != usize::MAX && h == hash && same(key, bytes)).then_some(value)
    }

    /// Stores `value` (not `usize::MAX`) for `key`, in place of whatever
    /// shared its slot.
    #[inline]
    pub fn put(&mut self, hash: u64, key: &'k [u8], value: usize) {
        self.slots[Self::slot(hash)] = (hash, key, value);
    }
}

/// Byte equality, eight bytes at a time and inlined (category values are
/// short: a call to `memcmp` would cost more than the comparison).
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in ca.by_ref().zip(cb.by_ref()) {
        if x != y {
            return false;
        }
    }
    ca.remainder()
        .iter()
        .zip(cb.remainder())
        .all(|(x, y)| x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_it_holds_and_nothing_else() {
        let words: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| format!("value-{i}-{}", "x".repeat((i % 23) as usize)).into_bytes())
            .collect();
        let mut near = Near::new();
        for (i, w) in words.iter().enumerate() {
            near.put(Near::hash(w), w, i);
        }
        let mut held = 0;
        for (i, w) in words.iter().enumerate() {
            if let Some(v) = near.get(Near::hash(w), w) {
                assert_eq!(v, i);
                held += 1;
            }
            // A different value of the same hash slot is never mistaken.
            let mut other = w.clone();
            other.push(b'!');
            assert_eq!(near.get(Near::hash(&other), &other), None);
            assert_eq!(near.get(Near::hash(w), &other), None);
        }
        assert!(held > 100, "{held}");
        assert_eq!(Near::new().get(Near::hash(b""), b""), None);
        assert!(same(b"", b"") && same(b"abcdefghij", b"abcdefghij"));
        assert!(!same(b"abcdefghij", b"abcdefghik") && !same(b"abc", b"abcd"));
    }
}

//! Random 128-bit ids (request ids, agent ids, W3C trace and span ids).
//!
//! Each thread draws from its own small PRNG seeded from the OS, so an id
//! costs a few nanoseconds and no lock. A forked child inherits its parent's
//! generator state; [`after_fork`] bumps a generation counter so every thread
//! of the child reseeds before its next id instead of repeating the parent's.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RNG: RefCell<(u64, SmallRng)> = RefCell::new((u64::MAX, SmallRng::seed_from_u64(0)));
}

fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        // No OS entropy (never seen on Linux): fall back to time and address
        // entropy, which still differs across processes and threads.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let addr = std::ptr::addr_of!(seed) as usize as u128;
        seed[..16].copy_from_slice(&t.to_le_bytes());
        seed[16..].copy_from_slice(&(addr ^ u128::from(std::process::id())).to_le_bytes());
    }
    seed
}

/// Marks every thread's generator stale; call in a child right after fork.
pub fn after_fork() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// A random non-zero 128-bit id.
#[inline]
pub fn random_u128() -> u128 {
    RNG.with(|cell| {
        let mut guard = cell.borrow_mut();
        let generation = GENERATION.load(Ordering::Relaxed);
        if guard.0 != generation {
            *guard = (generation, SmallRng::from_seed(os_seed()));
        }
        let rng = &mut guard.1;
        loop {
            let v = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            if v != 0 {
                return v;
            }
        }
    })
}

/// A random non-zero 64-bit id.
#[inline]
pub fn random_u64() -> u64 {
    #[allow(clippy::cast_possible_truncation)]
    let v = random_u128() as u64;
    if v == 0 {
        1
    } else {
        v
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `v` as 32 lowercase hex digits into `out`.
#[inline]
pub fn hex_u128(v: u128, out: &mut [u8; 32]) {
    for (i, byte) in v.to_be_bytes().iter().enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
}

/// The value of exactly 32 lowercase hex digits (what [`hex_u128`]
/// writes), or `None` for anything else: an id read back from this
/// value is the text it was read from.
#[inline]
pub fn parse_hex_u128(text: &[u8]) -> Option<u128> {
    if text.len() != 32 {
        return None;
    }
    let mut v = 0u128;
    for &c in text {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

/// `v` as a 32-digit lowercase hex string.
pub fn hex_string(v: u128) -> String {
    let mut buf = [0u8; 32];
    hex_u128(v, &mut buf);
    buf.iter().map(|&b| b as char).collect()
}

/// `bytes` as lowercase hex.
pub fn hex_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_nonzero() {
        let ids: HashSet<u128> = (0..100_000).map(|_| random_u128()).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(!ids.contains(&0));
    }

    #[test]
    fn hex_roundtrip() {
        let v = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        assert_eq!(hex_string(v), "0123456789abcdeffedcba9876543210");
        assert_eq!(u128::from_str_radix(&hex_string(v), 16).unwrap(), v);
        assert_eq!(hex_bytes(&[0, 255, 16]), "00ff10");
    }

    #[test]
    fn reseed_after_fork_changes_stream() {
        let a = random_u128();
        after_fork();
        let b = random_u128();
        assert_ne!(a, b);
    }

    #[test]
    fn parse_hex_reads_back_only_what_hex_u128_writes() {
        for v in [1u128, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            assert_eq!(parse_hex_u128(hex_string(v).as_bytes()), Some(v));
        }
        assert_eq!(parse_hex_u128(&[b'0'; 32]), Some(0));
        assert_eq!(parse_hex_u128(b"0123456789ABCDEFfedcba9876543210"), None);
        assert_eq!(parse_hex_u128(b"0123456789abcdeffedcba987654321"), None);
        assert_eq!(parse_hex_u128(b"0123456789abcdeffedcba98765432100"), None);
        assert_eq!(parse_hex_u128(b"0123456789abcdeffedcba987654321g"), None);
    }
}

//! Random numbers from the operating system, for identifiers that must not be guessed or that
//! RFCs ask to start at random (RTP sequence numbers and timestamps, SSRCs, ICE credentials).

/// Fills `buf` from the OS generator. Returns false (leaving zeros) if it is unavailable, which
/// never happens on a supported system; callers that need secrecy use [`crate::call_id`], which
/// fails instead.
pub fn fill(buf: &mut [u8]) -> bool {
    buf.fill(0);
    getrandom::fill(buf).is_ok()
}

/// A random `u16`.
pub fn u16() -> u16 {
    let mut b = [0u8; 2];
    fill(&mut b);
    u16::from_be_bytes(b)
}

/// A random `u32`.
pub fn u32() -> u32 {
    let mut b = [0u8; 4];
    fill(&mut b);
    u32::from_be_bytes(b)
}

/// `len` random characters from `[A-Za-z0-9]`.
pub fn alphanumeric(len: usize) -> String {
    const ALPHABET: &[u8; 62] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = vec![0u8; len];
    fill(&mut bytes);
    // 256 is not a multiple of 62: reject the top values so every character is equally likely.
    bytes
        .iter()
        .map(|&b| {
            let mut v = b;
            while v >= 248 {
                let mut one = [0u8; 1];
                fill(&mut one);
                v = one[0];
            }
            ALPHABET[usize::from(v % 62)] as char
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn alphanumeric_has_the_length_and_alphabet() {
        let s = super::alphanumeric(32);
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(super::alphanumeric(32), s);
    }
}

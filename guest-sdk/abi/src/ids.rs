use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

/// The id of an object in a ferry cluster: 16 bytes, the first 8 naming the node (or driver)
/// that owns the object, the last 8 a sequence number unique on that owner.
///
/// Embedding the owner is Ray's ownership design: whoever holds an id knows whom to ask about
/// the object's location and lifetime without a central directory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(transparent)]
pub struct ObjectId(pub [u8; 16]);

impl ObjectId {
    /// Builds an id from its owner and sequence number.
    pub const fn new(owner: u64, seq: u64) -> Self {
        let o = owner.to_le_bytes();
        let s = seq.to_le_bytes();
        Self([
            o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7], s[0], s[1], s[2], s[3], s[4], s[5],
            s[6], s[7],
        ])
    }

    /// The owner (node or driver) that created the object.
    pub fn owner(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }

    /// The sequence number on the owner.
    pub fn seq(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[8..]);
        u64::from_le_bytes(b)
    }
}

/// The id of a Wasm module: the BLAKE3 hash of its bytes. The same bytes always have the same
/// id, on every node, which is what lets nodes cache modules by content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModuleId(pub [u8; 32]);

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], ParseIdError> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return Err(ParseIdError {
            expected_len: 2 * N,
        });
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16);
        let lo = (pair[1] as char).to_digit(16);
        match (hi, lo) {
            (Some(hi), Some(lo)) => out[i] = (hi * 16 + lo) as u8,
            _ => {
                return Err(ParseIdError {
                    expected_len: 2 * N,
                });
            }
        }
    }
    Ok(out)
}

/// An id string was not the right number of hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIdError {
    expected_len: usize,
}

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {} hexadecimal digits", self.expected_len)
    }
}

impl core::error::Error for ParseIdError {}

macro_rules! hex_id {
    ($ty:ident, $n:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($ty))?;
                write_hex(f, &self.0)?;
                write!(f, ")")
            }
        }
        impl FromStr for $ty {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex::<$n>(s).map(Self)
            }
        }
    };
}
hex_id!(ObjectId, 16);
hex_id!(ModuleId, 32);

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn object_id_parts_round_trip() {
        let id = ObjectId::new(0xdead_beef_0102_0304, 42);
        assert_eq!(id.owner(), 0xdead_beef_0102_0304);
        assert_eq!(id.seq(), 42);
        assert_eq!(id.to_string().parse::<ObjectId>().unwrap(), id);
        assert!("xyz".parse::<ObjectId>().is_err());
        assert!("zz".repeat(16).parse::<ObjectId>().is_err());
    }
}

//! Tensor frames: how parameter vectors travel (never as JSON numbers: a TinyCNN update is
//! 51 KB this way and ≈ 4× that as JSON text, slow to parse in a browser).
//!
//! ```text
//! offset  size  field
//!      0     4  magic "FLDP"
//!      4     2  protocol version (u16 LE)
//!      6     2  kind (u16 LE: FrameKind, or 3 for a masked update)
//!      8     8  server round (u64 LE)
//!     16     4  element count n (u32 LE)
//!     20    4n  n × f32 LE (a masked update: n × u32 LE)
//! ```

use crate::PROTOCOL_VERSION;

/// First four bytes of every tensor frame.
pub const MAGIC: [u8; 4] = *b"FLDP";
/// Bytes before the payload.
pub const HEADER_LEN: usize = 20;
/// Largest element count accepted (4 M floats = 16 MiB; TinyCNN has 12 810). Checked against
/// the header before the payload is read, so a hostile count cannot make us allocate.
pub const MAX_ELEMENTS: usize = 4 * 1024 * 1024;
/// Largest frame accepted, in bytes.
pub const MAX_FRAME_BYTES: usize = HEADER_LEN + 4 * MAX_ELEMENTS;

/// What a tensor frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameKind {
    /// The global model sent with train instructions.
    GlobalModel = 1,
    /// A client's update (local − global).
    Update = 2,
}

impl FrameKind {
    fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::GlobalModel),
            2 => Some(Self::Update),
            _ => None,
        }
    }
}

/// A decoded tensor frame.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorFrame {
    pub kind: FrameKind,
    pub server_round: u64,
    pub values: Vec<f32>,
}

/// Why bytes are not a valid tensor frame; each names what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is {0} bytes: expected at least the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("frame is {0} bytes: expected at most {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("frame starts with {0:?}: expected magic \"FLDP\"")]
    Magic([u8; 4]),
    #[error("frame speaks protocol version {found}: expected {PROTOCOL_VERSION}")]
    Version { found: u16 },
    #[error("frame kind {0}: expected 1 (global model), 2 (update) or 3 (masked update)")]
    Kind(u16),
    #[error("frame declares {0} elements: expected at most {MAX_ELEMENTS}")]
    Count(u64),
    #[error(
        "frame declares {declared} elements ({expected} payload bytes) but carries {actual} payload bytes"
    )]
    Length {
        declared: usize,
        expected: usize,
        actual: usize,
    },
}

/// The kind number of a [`MaskedFrame`].
pub const MASKED_KIND: u16 = 3;

/// A member's masked vector under secure aggregation: its encoded update plus its masks, as
/// u32s mod 2³² (same header as a tensor frame, kind [`MASKED_KIND`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedFrame {
    pub server_round: u64,
    pub values: Vec<u32>,
}

/// Any frame a client may send after `TrainRes`.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultFrame {
    Tensor(TensorFrame),
    Masked(MaskedFrame),
}

/// A frame's header, checked, and its payload of 4-byte words.
struct Raw<'a> {
    kind: u16,
    server_round: u64,
    words: std::slice::ChunksExact<'a, u8>,
}

fn encode_words(
    kind: u16,
    server_round: u64,
    words: impl ExactSizeIterator<Item = [u8; 4]>,
) -> Result<Vec<u8>, FrameError> {
    if words.len() > MAX_ELEMENTS {
        return Err(FrameError::Count(words.len() as u64));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + 4 * words.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&server_round.to_le_bytes());
    out.extend_from_slice(&(words.len() as u32).to_le_bytes());
    for w in words {
        out.extend_from_slice(&w);
    }
    Ok(out)
}

/// Size limits and header first, allocation last.
fn parse(bytes: &[u8]) -> Result<Raw<'_>, FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::TooShort(bytes.len()));
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(FrameError::Magic(magic));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version { found: version });
    }
    let kind = u16::from_le_bytes([bytes[6], bytes[7]]);
    if FrameKind::from_u16(kind).is_none() && kind != MASKED_KIND {
        return Err(FrameError::Kind(kind));
    }
    let mut round = [0u8; 8];
    round.copy_from_slice(&bytes[8..16]);
    let count = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]) as usize;
    if count > MAX_ELEMENTS {
        return Err(FrameError::Count(count as u64));
    }
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != 4 * count {
        return Err(FrameError::Length {
            declared: count,
            expected: 4 * count,
            actual: payload.len(),
        });
    }
    Ok(Raw {
        kind,
        server_round: u64::from_le_bytes(round),
        words: payload.chunks_exact(4),
    })
}

fn word(c: &[u8]) -> [u8; 4] {
    [c[0], c[1], c[2], c[3]]
}

impl TensorFrame {
    /// Encodes the frame; fails only if `values` is over [`MAX_ELEMENTS`].
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        encode_words(
            self.kind as u16,
            self.server_round,
            self.values.iter().map(|v| v.to_le_bytes()),
        )
    }

    /// Decodes and checks a tensor frame (a masked frame is refused: it is no tensor).
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        match ResultFrame::decode(bytes)? {
            ResultFrame::Tensor(t) => Ok(t),
            ResultFrame::Masked(_) => Err(FrameError::Kind(MASKED_KIND)),
        }
    }
}

impl MaskedFrame {
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        encode_words(
            MASKED_KIND,
            self.server_round,
            self.values.iter().map(|v| v.to_le_bytes()),
        )
    }
}

impl ResultFrame {
    /// Decodes and checks any frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let raw = parse(bytes)?;
        Ok(match FrameKind::from_u16(raw.kind) {
            Some(kind) => Self::Tensor(TensorFrame {
                kind,
                server_round: raw.server_round,
                values: raw.words.map(|c| f32::from_le_bytes(word(c))).collect(),
            }),
            None => Self::Masked(MaskedFrame {
                server_round: raw.server_round,
                values: raw.words.map(|c| u32::from_le_bytes(word(c))).collect(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> TensorFrame {
        TensorFrame {
            kind: FrameKind::Update,
            server_round: 7,
            values: vec![1.5, -0.0, f32::MIN_POSITIVE, 3e38],
        }
    }

    #[test]
    fn round_trip_is_bit_exact_and_sized() {
        let bytes = frame().encode().expect("small");
        assert_eq!(bytes.len(), HEADER_LEN + 16);
        let back = TensorFrame::decode(&bytes).expect("valid");
        assert_eq!(back.server_round, 7);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.values), bits(&frame().values));
        // TinyCNN update: 12 810 floats → 51 260 bytes.
        let tiny = TensorFrame {
            kind: FrameKind::GlobalModel,
            server_round: 1,
            values: vec![0.0; 12_810],
        };
        assert_eq!(tiny.encode().expect("small").len(), 51_260);
    }

    #[test]
    fn masked_frames_carry_u32s_exactly() {
        let masked = MaskedFrame {
            server_round: 4,
            values: vec![0, u32::MAX, 0x7fc0_0000, 12345],
        };
        let bytes = masked.encode().unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 16);
        assert_eq!(ResultFrame::decode(&bytes), Ok(ResultFrame::Masked(masked)));
        let tensor = frame().encode().unwrap();
        assert!(matches!(
            ResultFrame::decode(&tensor),
            Ok(ResultFrame::Tensor(_))
        ));
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        let good = frame().encode().expect("small");
        let with = |i: usize, b: u8| {
            let mut v = good.clone();
            v[i] = b;
            TensorFrame::decode(&v)
        };
        assert_eq!(
            TensorFrame::decode(&good[..5]),
            Err(FrameError::TooShort(5))
        );
        assert_eq!(with(0, b'X'), Err(FrameError::Magic(*b"XLDP")));
        assert_eq!(with(4, 9), Err(FrameError::Version { found: 9 }));
        assert_eq!(with(6, 4), Err(FrameError::Kind(4)));
        assert_eq!(
            with(6, 3),
            Err(FrameError::Kind(3)),
            "a masked frame is no tensor"
        );
        assert_eq!(
            TensorFrame::decode(&good[..good.len() - 1])
                .unwrap_err()
                .to_string(),
            "frame declares 4 elements (16 payload bytes) but carries 15 payload bytes"
        );
        // A hostile count is refused from the header alone.
        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            TensorFrame::decode(&huge),
            Err(FrameError::Count(u32::MAX as u64))
        );
        assert_eq!(
            TensorFrame::decode(&vec![0; MAX_FRAME_BYTES + 1]),
            Err(FrameError::TooLarge(MAX_FRAME_BYTES + 1))
        );
    }
}

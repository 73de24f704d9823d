//! Where the parts of a stored object lie.
//!
//! An object is its postcard metadata followed by its out-of-band buffers (PEP 574's split):
//!
//! ```text
//! | metadata | pad | buffer 0 | pad to page | buffer 1 | pad | ...
//! ```
//!
//! Buffers of a page or more start on a page boundary and are padded with zeros to the next
//! one, so the host can map a buffer's pages into a guest without exposing anything else;
//! smaller buffers are 64-byte aligned (enough for any element type). An object with a
//! page-sized buffer is itself page-aligned in the store (see [`super::alloc::Allocator`]).

use serde::{Deserialize, Serialize};

use super::alloc::{MIN_ALIGN, PAGE};

/// One buffer's place inside an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferRange {
    /// Offset from the object's start.
    pub offset: u64,
    /// Length in bytes (padding excluded).
    pub len: u64,
}

impl BufferRange {
    /// The bytes this buffer occupies with its padding.
    pub fn padded_len(&self) -> u64 {
        // Layouts come from `Layout::plan`, which refuses lengths whose padding overflows.
        self.padded().unwrap_or(u64::MAX)
    }

    /// The padded length, `None` if it overflows.
    fn padded(&self) -> Option<u64> {
        let align = if self.len >= PAGE { PAGE } else { MIN_ALIGN };
        self.len.checked_next_multiple_of(align)
    }
}

/// The layout of one object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Length of the metadata (the postcard stream) at the object's start.
    pub meta_len: u64,
    /// The buffers, in placeholder order.
    pub buffers: Vec<BufferRange>,
}

impl Layout {
    /// An object with no buffers.
    pub fn plain(len: usize) -> Self {
        Self {
            meta_len: len as u64,
            buffers: Vec::new(),
        }
    }

    /// Places `meta_len` bytes of metadata and buffers of the given lengths. `None` if the
    /// sizes overflow.
    pub fn plan(meta_len: usize, buffer_lens: &[usize]) -> Option<Self> {
        let mut end = meta_len as u64;
        let mut buffers = Vec::with_capacity(buffer_lens.len());
        for &len in buffer_lens {
            let len = len as u64;
            let align = if len >= PAGE { PAGE } else { MIN_ALIGN };
            let offset = end.checked_add(align - 1)? / align * align;
            let range = BufferRange { offset, len };
            end = offset.checked_add(range.padded()?)?;
            buffers.push(range);
        }
        Some(Self {
            meta_len: meta_len as u64,
            buffers,
        })
    }

    /// The object's total length (metadata, buffers and padding).
    pub fn total_len(&self) -> u64 {
        self.buffers
            .last()
            .map_or(self.meta_len, |b| b.offset + b.padded_len())
    }

    /// The byte ranges that are padding, to be zeroed when an object is written.
    pub fn padding(&self) -> Vec<std::ops::Range<u64>> {
        let mut out = Vec::new();
        let mut end = self.meta_len;
        for b in &self.buffers {
            if b.offset > end {
                out.push(end..b.offset);
            }
            end = b.offset + b.len;
            let padded = b.offset + b.padded_len();
            if padded > end {
                out.push(end..padded);
            }
            end = padded;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzz corpus (`fuzz/corpus/layout/overflowing-buffers`): a peer announcing a
    /// buffer of nearly 2^64 bytes overflowed the padding (a panic in debug builds, and in
    /// release a wrapped, tiny layout whose buffer claimed 2^64 bytes of a small block).
    #[test]
    fn lengths_whose_padding_overflows_are_refused() {
        assert_eq!(Layout::plan(8, &[usize::MAX]), None);
        assert_eq!(Layout::plan(8, &[usize::MAX - 100]), None);
        assert!(Layout::plan(8, &[4096, 10]).is_some());
    }

    #[test]
    fn large_buffers_are_page_aligned_and_padded() {
        let l = Layout::plan(10, &[5, 5000, 0, 4096]).unwrap();
        assert_eq!(l.buffers[0], BufferRange { offset: 64, len: 5 });
        assert_eq!(l.buffers[1].offset, 4096);
        assert_eq!(l.buffers[1].padded_len(), 8192);
        assert_eq!(l.buffers[2].offset, 12288);
        assert_eq!(l.buffers[3].offset, 12288);
        assert_eq!(l.total_len(), 16384);
        let pad: u64 = l.padding().iter().map(|r| r.end - r.start).sum();
        assert_eq!(pad, l.total_len() - 10 - 5 - 5000 - 4096);
    }

    #[test]
    fn no_buffers_is_just_the_metadata() {
        assert_eq!(Layout::plan(7, &[]).unwrap().total_len(), 7);
        assert_eq!(Layout::plain(7).total_len(), 7);
    }
}

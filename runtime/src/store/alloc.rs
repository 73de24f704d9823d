//! The store's space allocator: a best-fit free list with coalescing.
//!
//! Space is handed out in multiples of [`MIN_ALIGN`]; allocations of a page or more start on a
//! page boundary so they can later be mapped into guests. Freed extents merge with their
//! neighbours; among equally good fits the lowest offset wins, so reused (already faulted-in)
//! space is preferred over fresh space.

use std::collections::{BTreeMap, BTreeSet};

/// Every allocation starts on a multiple of this and has a size that is a multiple of it.
pub const MIN_ALIGN: u64 = 64;
/// Allocations at least this large start on a page boundary.
pub const PAGE: u64 = 4096;

/// A best-fit allocator over `[0, capacity)`.
#[derive(Debug)]
pub struct Allocator {
    capacity: u64,
    /// Free extents by offset: offset -> length.
    by_offset: BTreeMap<u64, u64>,
    /// Free extents by size: (length, offset).
    by_size: BTreeSet<(u64, u64)>,
    used: u64,
}

fn round_up(n: u64, to: u64) -> Option<u64> {
    n.checked_add(to - 1).map(|v| v / to * to)
}

impl Allocator {
    /// An allocator with all of `capacity` free.
    pub fn new(capacity: u64) -> Self {
        let capacity = capacity / MIN_ALIGN * MIN_ALIGN;
        let mut a = Self {
            capacity,
            by_offset: BTreeMap::new(),
            by_size: BTreeSet::new(),
            used: 0,
        };
        if capacity > 0 {
            a.insert_free(0, capacity);
        }
        a
    }

    /// Total bytes managed.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes currently allocated (rounded sizes).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The size an allocation of `len` bytes really takes, and its alignment.
    pub fn footprint(len: u64) -> Option<(u64, u64)> {
        let len = len.max(1);
        if len >= PAGE {
            Some((round_up(len, PAGE)?, PAGE))
        } else {
            Some((round_up(len, MIN_ALIGN)?, MIN_ALIGN))
        }
    }

    /// Allocates room for `len` bytes; returns `(offset, size)`, or `None` if no free extent
    /// is large enough.
    pub fn allocate(&mut self, len: u64) -> Option<(u64, u64)> {
        let (size, align) = Self::footprint(len)?;
        // Best fit: the smallest extent that holds `size` once aligned.
        let mut found = None;
        for &(ext_len, ext_off) in self.by_size.range((size, 0)..) {
            let start = round_up(ext_off, align)?;
            if start + size <= ext_off + ext_len {
                found = Some((ext_off, ext_len, start));
                break;
            }
        }
        let (ext_off, ext_len, start) = found?;
        self.remove_free(ext_off, ext_len);
        if start > ext_off {
            self.insert_free(ext_off, start - ext_off);
        }
        let end = start + size;
        if end < ext_off + ext_len {
            self.insert_free(end, ext_off + ext_len - end);
        }
        self.used += size;
        Some((start, size))
    }

    /// Returns `(offset, size)` (as given by [`allocate`](Self::allocate)) to the free list.
    pub fn free(&mut self, offset: u64, size: u64) {
        debug_assert!(offset + size <= self.capacity);
        self.used -= size;
        let mut start = offset;
        let mut len = size;
        // Merge with the extent before.
        if let Some((&prev_off, &prev_len)) = self.by_offset.range(..offset).next_back()
            && prev_off + prev_len == offset
        {
            self.remove_free(prev_off, prev_len);
            start = prev_off;
            len += prev_len;
        }
        // Merge with the extent after.
        if let Some(&next_len) = self.by_offset.get(&(offset + size)) {
            self.remove_free(offset + size, next_len);
            len += next_len;
        }
        self.insert_free(start, len);
    }

    /// The largest single allocation that would succeed now.
    pub fn largest_free(&self) -> u64 {
        self.by_size.iter().next_back().map_or(0, |&(l, _)| l)
    }

    fn insert_free(&mut self, off: u64, len: u64) {
        self.by_offset.insert(off, len);
        self.by_size.insert((len, off));
    }

    fn remove_free(&mut self, off: u64, len: u64) {
        self.by_offset.remove(&off);
        self.by_size.remove(&(len, off));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_space_is_reused_and_coalesced() {
        let mut a = Allocator::new(1 << 20);
        let (x, xs) = a.allocate(100).unwrap();
        let (y, ys) = a.allocate(100).unwrap();
        let (z, zs) = a.allocate(100).unwrap();
        assert_eq!((x, xs), (0, 128));
        assert_eq!(y, 128);
        a.free(y, ys);
        // The hole is reused by a fitting allocation.
        assert_eq!(a.allocate(64).unwrap().0, 128);
        a.free(128, 64);
        a.free(x, xs);
        a.free(z, zs);
        assert_eq!(a.used(), 0);
        assert_eq!(a.largest_free(), 1 << 20);
    }

    #[test]
    fn large_allocations_are_page_aligned() {
        let mut a = Allocator::new(1 << 20);
        a.allocate(10).unwrap();
        let (off, size) = a.allocate(5000).unwrap();
        assert_eq!(off % PAGE, 0);
        assert_eq!(size, 8192);
    }

    proptest::proptest! {
        /// Any sequence of allocations and frees keeps blocks disjoint, aligned and inside
        /// the capacity, accounts every byte, and coalesces back to one free extent.
        #[test]
        fn random_alloc_free_keeps_the_invariants(
            ops in proptest::collection::vec((0u64..20_000, proptest::bool::ANY), 1..200)
        ) {
            let cap = 256 * 1024;
            let mut a = Allocator::new(cap);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (len, free) in ops {
                if free && !live.is_empty() {
                    let (o, s) = live.swap_remove(len as usize % live.len());
                    a.free(o, s);
                } else if let Some((o, s)) = a.allocate(len) {
                    let (size, align) = Allocator::footprint(len).unwrap();
                    proptest::prop_assert_eq!(s, size);
                    proptest::prop_assert_eq!(o % align, 0);
                    proptest::prop_assert!(o + s <= cap);
                    for &(lo, ls) in &live {
                        proptest::prop_assert!(o + s <= lo || lo + ls <= o, "overlap");
                    }
                    live.push((o, s));
                }
                proptest::prop_assert_eq!(a.used(), live.iter().map(|b| b.1).sum::<u64>());
            }
            for (o, s) in live.drain(..) {
                a.free(o, s);
            }
            proptest::prop_assert_eq!(a.used(), 0);
            proptest::prop_assert_eq!(a.largest_free(), cap);
        }
    }

    #[test]
    fn exact_accounting_until_full() {
        let mut a = Allocator::new(64 * 1024);
        let mut live = Vec::new();
        while let Some(block) = a.allocate(1000) {
            live.push(block);
        }
        assert_eq!(a.used(), live.iter().map(|b| b.1).sum::<u64>());
        assert!(a.allocate(1).is_none() || a.used() < a.capacity());
        for (o, s) in live.drain(..) {
            a.free(o, s);
        }
        assert_eq!(a.used(), 0);
        assert!(a.allocate(60 * 1024).is_some());
    }
}

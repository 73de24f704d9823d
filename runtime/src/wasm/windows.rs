//! Zero-copy into a guest: store buffers mapped copy-on-write into its linear memory.
//!
//! When a guest reads a buffer of at least the node's `map_threshold`, the host grows the
//! guest's memory by enough Wasm pages (charged to its memory limit, like any growth), or
//! reuses a window the guest released earlier, and maps the buffer's pages from the store file
//! over it with `MAP_PRIVATE | MAP_FIXED`. The guest reads the object in place; its writes land
//! in private pages and the stored object never changes. The window keeps the object pinned
//! (its `Arc<Sealed>`).
//!
//! Hazards (see `DESIGN.md`), and how they are met:
//! - a pooled instance slot that is reset with a `MAP_PRIVATE` window still in place would show
//!   the *file's* bytes to the next instance: every window is mapped back to anonymous memory
//!   when the guest releases it and, for the rest, before the instance's memory goes back to
//!   the pool: `execute` calls [`Windows::restore_all`] before `Store::into_data`, and on
//!   every other path the `Store` is dropped, which drops its data (and so [`Windows`], whose
//!   `Drop` restores) *before* its instances (wasmtime 48's `Drop for Store`);
//! - linear memory must not move while windows exist: the engine sets
//!   `memory_may_move(false)` and uses the pooling allocator (fixed slots), and every mapping
//!   checks the address against the memory's current base and size.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::{Caller, Memory};

use crate::store::{Sealed, map_anonymous};

/// Bytes in a Wasm page.
const WASM_PAGE: u64 = 64 * 1024;

/// A mapped window.
#[derive(Debug)]
struct Window {
    /// Offset in the guest's memory.
    guest_offset: u64,
    /// The window's whole size (whole Wasm pages).
    size: u64,
    /// How much of it is mapped from the store now.
    mapped: usize,
    /// Host address of `guest_offset` when it was mapped.
    host_addr: usize,
    /// Pins the object while the mapping exists.
    _object: Arc<Sealed>,
}

/// The windows of one guest instance.
#[derive(Debug, Default)]
pub struct Windows {
    active: HashMap<u32, Window>,
    /// Released windows (offset, size), anonymous again, reusable for later mappings.
    free: Vec<(u64, u64)>,
    next_handle: u32,
}

/// Why a buffer was copied instead of mapped.
pub type NotMapped = String;

impl Windows {
    /// Maps buffer `index` of `object` into the guest's memory. Returns the guest address and
    /// a handle for [`release`](Self::release).
    pub fn map<T>(
        caller: &mut Caller<'_, T>,
        windows: impl Fn(&mut T) -> &mut Windows,
        memory: Memory,
        object: &Arc<Sealed>,
        index: usize,
    ) -> Result<(u32, u32), NotMapped> {
        let ty = memory.ty(&*caller);
        if ty.is_shared() || ty.is_64() {
            return Err("the guest's memory is shared or 64-bit".into());
        }
        let Some(range) = object.layout().buffers.get(index).copied() else {
            return Err("no such buffer".into());
        };
        let need = range.padded_len();
        let reuse = {
            let w = windows(caller.data_mut());
            w.free
                .iter()
                .position(|&(_, size)| size >= need)
                .map(|pos| w.free.swap_remove(pos))
        };
        let (guest_offset, size) = match reuse {
            Some(window) => window,
            None => {
                let pages = need.div_ceil(WASM_PAGE);
                let old = memory
                    .grow(&mut *caller, pages)
                    .map_err(|e| format!("growing the guest's memory failed: {e}"))?;
                (old * WASM_PAGE, pages * WASM_PAGE)
            }
        };
        let give_back = |caller: &mut Caller<'_, T>, why: String| {
            windows(caller.data_mut()).free.push((guest_offset, size));
            Err(why)
        };
        let base = memory.data_ptr(&*caller);
        let len = memory.data_size(&*caller) as u64;
        if guest_offset + size > len || guest_offset > u64::from(u32::MAX) {
            return give_back(caller, "the window lies outside the guest's memory".into());
        }
        // In bounds (checked just above), so the pointer stays inside the memory's allocation.
        let dst = base.wrapping_add(guest_offset as usize);
        if !(dst as usize).is_multiple_of(4096) {
            return give_back(caller, "the guest's memory is not page-aligned".into());
        }
        // SAFETY: `[dst, dst + need)` lies inside this guest's linear memory (bounds checked
        // against its current size just above; `need <= size`), is page-aligned (checked), and
        // belongs to this window alone: it was either just added by `grow` (beyond everything
        // the guest's allocator knows about) or released by an earlier window. Linear memory
        // does not move (`memory_may_move(false)`, pooled slots). The window keeps `object`
        // alive while mapped, and `release`/`restore_all` map anonymous memory back before
        // the memory is used for anything else.
        let mapped = match unsafe { object.map_buffer(index, dst) } {
            Ok(n) => n,
            Err(e) => return give_back(caller, format!("mmap failed: {e}")),
        };
        let w = windows(caller.data_mut());
        let active = &w.active;
        let handle = take_handle(&mut w.next_handle, |h| active.contains_key(&h));
        w.active.insert(
            handle,
            Window {
                guest_offset,
                size,
                mapped,
                host_addr: dst as usize,
                _object: object.clone(),
            },
        );
        Ok((guest_offset as u32, handle))
    }

    /// Unmaps window `handle` (anonymous memory back in place, the object unpinned). Returns
    /// false for an unknown handle.
    pub fn release(&mut self, handle: u32) -> bool {
        let Some(w) = self.active.remove(&handle) else {
            return false;
        };
        if Self::unmap(&w) {
            self.free.push((w.guest_offset, w.size));
        }
        true
    }

    /// Unmaps every window. Must run before the guest's memory is dropped or recycled.
    pub fn restore_all(&mut self) {
        for (_, w) in self.active.drain() {
            Self::unmap(&w);
        }
        self.free.clear();
    }

    fn unmap(w: &Window) -> bool {
        // SAFETY: `[host_addr, host_addr + mapped)` is the range `map` mapped for this window
        // inside the guest's memory, which is still alive (windows are restored before the
        // store drops) and did not move; replacing it with anonymous zero pages is exactly the
        // state `grow` left it in.
        match unsafe { map_anonymous(w.host_addr as *mut u8, w.mapped) } {
            Ok(()) => true,
            Err(e) => {
                // Leaving a file mapping in a pooled slot would leak the object to the next
                // instance; the process cannot uphold isolation any more.
                tracing::error!(
                    target: "ferry::store",
                    "could not unmap a guest window: {e}; aborting to keep guests isolated"
                );
                std::process::abort();
            }
        }
    }
}

/// The next window handle after `next` that is not `in_use` (never 0). Handles wrap after
/// `u32::MAX`; a handle still in use is skipped, so a window is never replaced (which would
/// leave its mapping in place). Fewer than 2^16 windows fit in a 4 GiB memory, so the search
/// is short.
fn take_handle(next: &mut u32, in_use: impl Fn(u32) -> bool) -> u32 {
    loop {
        *next = next.wrapping_add(1).max(1);
        if !in_use(*next) {
            return *next;
        }
    }
}

impl Drop for Windows {
    fn drop(&mut self) {
        // Runs while the memory is still alive: a `Store` drops its data before its instances,
        // and `into_data` is only called after `restore_all`.
        self.restore_all();
    }
}

#[cfg(test)]
mod tests {
    use super::take_handle;

    #[test]
    fn handles_wrap_without_replacing_a_window_in_use() {
        let mut next = u32::MAX - 1;
        let in_use = [u32::MAX, 1, 2];
        let busy = |h| in_use.contains(&h);
        assert_eq!(take_handle(&mut next, busy), 3, "skips MAX, 0, 1 and 2");
        assert_eq!(take_handle(&mut next, busy), 4);
        let mut next = 0;
        assert_eq!(take_handle(&mut next, |_| false), 1);
    }
}

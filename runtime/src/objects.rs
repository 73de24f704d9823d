//! The object table: what each object id on this node is (pending, ready, failed), who holds
//! it (reference counts), which refs it contains, and who is waiting for it.
//!
//! The table also owns the node's [`ObjectStore`]: [`ObjectTable::allocate`] is where space
//! for new objects comes from, and when the store is full it spills unpinned objects (least
//! recently used first) to disk; [`ObjectTable::wait_ready`] reads a spilled object back.
//! An object is *pinned* while anything besides the table holds its `Arc<Sealed>` (a reader,
//! a host view, a guest mapping, a task's argument); pinned objects are never spilled.
//!
//! An object is freed when its count reaches zero. Counts come from driver handles (through
//! the ref hooks in [`crate::codec`]), from objects that contain the id, from tasks that take
//! it as an argument or produce it, and from running guests that were given it. Freeing an
//! object releases the refs it contains, so a chain of nested objects goes in one step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_abi::ObjectId;
use tokio::sync::Notify;

use crate::error::{GetError, StoreError, TaskError};
use crate::ids::NodeId;
use crate::store::spill::{SpillDir, Spilled};
use crate::store::{Block, Layout, ObjectStore, Sealed, StoreStats};

/// What an object is now.
#[derive(Debug, Clone)]
pub enum ObjectState {
    /// Its task has not finished.
    Pending,
    /// Sealed in the store. Holding the `Arc` pins the bytes.
    Ready(Arc<Sealed>),
    /// Spilled to disk; read back by [`ObjectTable::wait_ready`].
    Spilled(Arc<Spilled>),
    /// Its task failed.
    Failed(Arc<TaskError>),
    /// Its bytes are not on this node: a result the node that ran its task keeps (Ray's rule:
    /// data stays where it was made until someone needs it), or another node's object this
    /// node only holds references to (counted here, registered once at its owner: a
    /// borrow). Where it is, or that it was lost with a node, is the distributed core's
    /// knowledge, not the table's: reading it pulls a copy through [`RemoteObjects`], and
    /// [`ObjectTable::location`] asks the same.
    Elsewhere,
}

thread_local! {
    /// Set on threads that must never do disk I/O (the network thread).
    static NO_DISK_IO: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as one that must never do disk I/O: the network runtime's thread, which
/// answers keep-alives. Spilling or reading back there is a bug that debug builds catch.
pub fn forbid_disk_io_on_this_thread() {
    NO_DISK_IO.set(true);
}

fn check_disk_io_allowed(what: &str) {
    debug_assert!(
        !NO_DISK_IO.get(),
        "{what} (blocking file I/O) on the network thread"
    );
}

/// What the table needs from the cluster layer to reach objects on other nodes.
pub trait RemoteObjects: Send + Sync + std::fmt::Debug {
    /// Pulls a copy of `id`, whose bytes are not here, into this node's store from wherever
    /// the cluster says it is. Returns the copy and the refs it contains.
    fn fetch(&self, id: ObjectId) -> BoxFuture<Result<ObjectWithRefs, GetError>>;
    /// This node freed `id`, one of its own objects whose bytes another node kept: that copy
    /// may go.
    fn freed(&self, id: ObjectId);
    /// This node started holding `id`, which another node owns: count one borrow there.
    fn borrow(&self, id: ObjectId);
    /// This node no longer holds `id`: give the borrow back.
    fn unborrow(&self, id: ObjectId);
    /// Calls `done` once the owner of `id` reports it complete (ready, failed or gone). Gives
    /// up quietly when `interest` can no longer be upgraded (the waiter left).
    fn watch_done(
        &self,
        id: ObjectId,
        interest: std::sync::Weak<ForeignWait>,
        done: Box<dyn FnOnce() + Send>,
    );
    /// Where `id`, whose bytes are not here, is as far as this node's core knows.
    fn location(&self, id: ObjectId) -> ObjectLocation;
}

/// Where an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectLocation {
    /// Its task has not finished.
    Pending,
    /// In the node's memory (the object store).
    Memory,
    /// Spilled to disk; a `get` reads it back.
    Disk,
    /// Its task failed.
    Failed,
    /// On another node of the cluster (the one that ran its task, or its owner); a `get`
    /// pulls a copy.
    Node(NodeId),
    /// Its only copy was on a node that died.
    Lost(NodeId),
}

/// Completion flags of the foreign ids of one [`ObjectTable::wait_many`].
#[derive(Debug)]
pub struct ForeignWait {
    done: Vec<std::sync::atomic::AtomicBool>,
    notify: Notify,
}

/// An object and the refs it contains.
pub type ObjectWithRefs = (Arc<Sealed>, Vec<ObjectId>);

/// A boxed future, for [`RemoteObjects`].
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// How a task ended, for [`ObjectTable::complete`].
#[derive(Debug)]
pub enum Completed {
    /// The result is in this node's store.
    Local(Arc<Sealed>),
    /// The result stays on the node that ran the task (the distributed core knows which).
    Elsewhere,
}

#[derive(Debug)]
struct Entry {
    state: ObjectState,
    refs: u64,
    contained: Vec<ObjectId>,
    notify: Option<Arc<Notify>>,
    /// When the object was last read (a tick of [`ObjectTable::clock`]), for choosing what to
    /// spill.
    last_used: u64,
    /// Another node keeps this node's object for it (the distributed core knows which): the
    /// core hears when it is freed, so that the copy goes too.
    kept_elsewhere: bool,
    /// This is a copy kept for the object's owner, holding one count for it until the owner's
    /// `FreeCopy` (or its death).
    hosted: bool,
    /// Of `refs`, the counts held for the cluster rather than by this node's own references:
    /// the owner's count on a copy kept for it, and a call's count on its own result while
    /// it runs here for a peer. They register no borrow.
    held: u64,
    /// Another node's object that this node stores a copy of (not an `Elsewhere` entry) and
    /// references itself (`refs > held`): a borrow is registered at its owner.
    borrowing: bool,
}

/// Figures about the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    /// Objects with a live reference.
    pub objects: u64,
    /// Of those, the ones whose task has not finished.
    pub pending: u64,
    /// Of those, the ones whose task failed.
    pub failed: u64,
}

/// A freed entry. Dropping it returns the object's space to the store and wakes anyone
/// still waiting on it (they will find it gone).
#[derive(Debug)]
struct Freed(ObjectId, Entry);

impl Drop for Freed {
    fn drop(&mut self) {
        if let Some(n) = self.1.notify.take() {
            n.notify_waiters();
        }
    }
}

/// What releases leave to do once the table lock is released: entries to drop, and borrows
/// to give back.
#[derive(Debug, Default)]
struct Released {
    freed: Vec<Freed>,
    /// Copies of other nodes' objects that this node no longer references itself.
    unborrow: Vec<ObjectId>,
}

/// Removes one reference from each id, freeing at zero and cascading to the refs a freed
/// object contained. Freed entries go to `r`, to be dropped after the lock is released.
fn release_locked(t: &mut HashMap<ObjectId, Entry>, ids: &[ObjectId], r: &mut Released) {
    let mut work: Vec<ObjectId> = ids.to_vec();
    while let Some(id) = work.pop() {
        let Some(e) = t.get_mut(&id) else { continue };
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 {
            if let Some(e) = t.remove(&id) {
                work.extend_from_slice(&e.contained);
                r.freed.push(Freed(id, e));
            }
        } else if e.borrowing && e.refs <= e.held {
            // Only the cluster's counts are left: this node's own borrow goes.
            e.borrowing = false;
            r.unborrow.push(id);
        }
    }
}

/// Which ids [`ObjectTable::wait_many`] flags as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFlags {
    /// Every id that is done (the guest ABI's `wait` reports them all).
    All,
    /// Only the first `num_ready` done ids, in order: the scan stops there (`ray.wait`'s
    /// answer, which is all a driver needs).
    First,
}

/// The object table of one node.
#[derive(Debug)]
pub struct ObjectTable {
    entries: Mutex<HashMap<ObjectId, Entry>>,
    /// Woken on every completion; `wait` listens to it.
    any_completed: Notify,
    store: ObjectStore,
    spill: Option<Arc<SpillDir>>,
    /// Held while objects are being spilled: one spiller at a time.
    spilling: Mutex<()>,
    clock: AtomicU64,
    /// The node whose objects these are (0 until set): ids owned by any other node are
    /// foreign, reached through `remote`.
    local: AtomicU64,
    remote: std::sync::OnceLock<Arc<dyn RemoteObjects>>,
}

impl ObjectTable {
    /// A table over `store`, spilling into `spill` (none: a full store fails puts at once).
    pub fn new(store: ObjectStore, spill: Option<Arc<SpillDir>>) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            any_completed: Notify::new(),
            store,
            spill,
            spilling: Mutex::new(()),
            clock: AtomicU64::new(0),
            local: AtomicU64::new(0),
            remote: std::sync::OnceLock::new(),
        }
    }

    /// Sets the node these objects belong to.
    pub fn set_local(&self, node: NodeId) {
        self.local.store(node.0, Ordering::Relaxed);
    }

    /// Connects the table to a cluster, so that objects on other nodes can be read.
    pub fn set_remote(&self, remote: Arc<dyn RemoteObjects>) {
        let _ = self.remote.set(remote);
    }

    /// Whether `id` is owned by another node of a cluster this table is connected to.
    pub fn is_foreign(&self, id: ObjectId) -> bool {
        self.remote.get().is_some() && id.owner() != self.local.load(Ordering::Relaxed)
    }

    /// Whether `id` is another node's object with no copy here (absent, or only borrowed).
    fn elsewhere(&self, t: &HashMap<ObjectId, Entry>, id: ObjectId) -> bool {
        self.is_foreign(id)
            && t.get(&id)
                .is_none_or(|e| matches!(e.state, ObjectState::Elsewhere))
    }

    /// Drops freed entries outside the lock, telling nodes that kept copies for us, and gives
    /// back the borrows this node no longer needs.
    fn dispose(&self, released: Released) {
        let Released { freed, unborrow } = released;
        if let Some(remote) = self.remote.get() {
            for id in unborrow {
                remote.unborrow(id);
            }
            for f in &freed {
                if f.1.kept_elsewhere {
                    remote.freed(f.0);
                }
                // A borrow of another node's object: held by an entry without a copy, or by
                // this node's own references to a copy.
                let borrowed = self.is_foreign(f.0) && matches!(f.1.state, ObjectState::Elsewhere);
                if borrowed || f.1.borrowing {
                    remote.unborrow(f.0);
                }
            }
        }
        drop(freed);
    }

    /// Counts one more reference of this node's own on an existing entry. Returns whether a
    /// borrow must now be registered at the owner: the first own reference to a copy of
    /// another node's object (a copy kept for its owner counts none of its own).
    fn retain_entry(&self, e: &mut Entry, id: ObjectId) -> bool {
        e.refs += 1;
        let copy_of_foreign = self.is_foreign(id) && !matches!(e.state, ObjectState::Elsewhere);
        if copy_of_foreign && !e.borrowing && e.refs > e.held {
            e.borrowing = true;
            return true;
        }
        false
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectId, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The entry of `id`, marked as just used (for choosing what to spill).
    fn touch<'t>(
        &self,
        t: &'t mut HashMap<ObjectId, Entry>,
        id: ObjectId,
    ) -> Result<&'t mut Entry, GetError> {
        let e = t.get_mut(&id).ok_or(GetError::ObjectLost { id })?;
        e.last_used = self.tick();
        Ok(e)
    }

    /// The store.
    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    /// Room for a new object laid out as `layout`. When the store is full, unpinned objects
    /// are spilled to disk (least recently used first) until the object fits; if nothing more
    /// can be spilled the store's `Full` error is returned and nothing stored is lost.
    pub fn allocate(&self, layout: Layout) -> Result<Block, StoreError> {
        // Each round spills or finds something busy; the bound only stops a reader that keeps
        // re-pinning the chosen objects from holding a put up forever.
        let mut rounds = 0;
        loop {
            match self.store.allocate_object(layout.clone()) {
                Err(full @ StoreError::Full { .. }) => {
                    rounds += 1;
                    if rounds > 1000 || !self.spill_some(layout.total_len()) {
                        return Err(full);
                    }
                }
                other => return other,
            }
        }
    }

    /// Spills unpinned objects worth at least `need` bytes (or all there are). Returns whether
    /// anything was freed, another spiller may have freed room meanwhile, or a chosen object
    /// was picked up by a reader while being written (so another round may find others).
    fn spill_some(&self, need: u64) -> bool {
        let Some(dir) = &self.spill else {
            return false;
        };
        check_disk_io_allowed("spilling");
        let free_before = self.store.stats().largest_free;
        let _one_at_a_time = self.spilling.lock().unwrap_or_else(|e| e.into_inner());
        if self.store.stats().largest_free > free_before {
            // Someone freed space while we waited for our turn: try again first.
            return true;
        }
        let candidates: Vec<(ObjectId, Arc<Sealed>)> = {
            let t = self.lock();
            let mut unpinned: Vec<(u64, ObjectId, &Arc<Sealed>)> = t
                .iter()
                .filter_map(|(id, e)| match &e.state {
                    // Only the table holds it: nobody is reading it and no guest maps it.
                    ObjectState::Ready(s) if Arc::strong_count(s) == 1 => {
                        Some((e.last_used, *id, s))
                    }
                    _ => None,
                })
                .collect();
            unpinned.sort_unstable_by_key(|c| c.0);
            let mut sum = 0u64;
            unpinned
                .into_iter()
                .take_while(|c| {
                    let take = sum < need;
                    sum += c.2.len() as u64;
                    take
                })
                .map(|(_, id, s)| (id, s.clone()))
                .collect()
        };
        let mut freed = false;
        let mut busy = false;
        for (id, sealed) in candidates {
            let spilled = match dir.write(id, &sealed) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    tracing::debug!(target: "ferry::store", "cannot spill {id}: {e}");
                    break;
                }
            };
            let mut t = self.lock();
            let Some(e) = t.get_mut(&id) else {
                // Freed meanwhile: its space comes back when `sealed` (the last holder) drops
                // at the end of this iteration, and the file goes with `spilled`.
                freed = true;
                continue;
            };
            // Still the same bytes and still unpinned (only the table and we hold it).
            if let ObjectState::Ready(s) = &e.state
                && Arc::ptr_eq(s, &sealed)
                && Arc::strong_count(s) == 2
            {
                let old = std::mem::replace(&mut e.state, ObjectState::Spilled(spilled));
                drop(t);
                drop(old);
                freed = true;
            } else {
                // Someone started reading it: it stays in memory and the file goes.
                busy = true;
            }
        }
        freed || busy
    }

    /// Reads a spilled object back into the store (spilling others if needed: its own file
    /// stops counting against the spill capacity meanwhile, so a full disk can still swap).
    fn restore(&self, id: ObjectId, spilled: Arc<Spilled>) -> Result<Arc<Sealed>, GetError> {
        check_disk_io_allowed("reading a spilled object back");
        let unavailable = |reason: String| GetError::Unavailable { id, reason };
        let lent = spilled.uncount();
        let read = self
            .allocate(spilled.layout().clone())
            .map_err(|e| unavailable(format!("no room to read it back from disk: {e}")))
            .and_then(|mut block| {
                spilled
                    .read_into(block.as_mut_slice())
                    .map_err(|e| unavailable(format!("reading it back from disk failed: {e}")))?;
                Ok(block)
            });
        let block = match read {
            Ok(b) => b,
            Err(e) => {
                if lent {
                    spilled.recount();
                }
                return Err(e);
            }
        };
        let sealed = block.seal();
        let mut t = self.lock();
        let e = self.touch(&mut t, id)?;
        match &e.state {
            ObjectState::Spilled(cur) if Arc::ptr_eq(cur, &spilled) => {
                let old = std::mem::replace(&mut e.state, ObjectState::Ready(sealed.clone()));
                drop(t);
                drop(old);
                Ok(sealed)
            }
            // Another reader restored it first.
            ObjectState::Ready(other) => Ok(other.clone()),
            _ => Err(GetError::ObjectLost { id }),
        }
    }

    /// The store's figures, with what only the table knows: pinned and spilled objects.
    pub fn store_stats(&self) -> StoreStats {
        let mut s = self.store.stats();
        {
            let t = self.lock();
            for e in t.values() {
                if let ObjectState::Ready(sealed) = &e.state {
                    s.objects_in_memory += 1;
                    if Arc::strong_count(sealed) > 1 {
                        s.pinned_objects += 1;
                        s.pinned_bytes += sealed.len() as u64;
                    }
                }
            }
        }
        if let Some(dir) = &self.spill {
            s.spill = Some(dir.stats());
        }
        s
    }

    /// Adds a sealed object with `refs` initial references. Retains the refs it contains.
    pub fn insert_ready(
        &self,
        id: ObjectId,
        bytes: Arc<Sealed>,
        contained: Vec<ObjectId>,
        refs: u64,
    ) {
        let mut t = self.lock();
        let borrowed = self.retain_contained(&mut t, &contained);
        t.insert(
            id,
            Entry {
                state: ObjectState::Ready(bytes),
                refs,
                contained,
                notify: None,
                last_used: self.tick(),
                kept_elsewhere: false,
                hosted: false,
                held: 0,
                borrowing: false,
            },
        );
        drop(t);
        self.borrow_all(borrowed);
    }

    /// Counts one reference on each contained id, making borrowed entries for ids another
    /// node owns that this table does not have. Returns those, to be registered at their
    /// owners once the lock is released.
    fn retain_contained(
        &self,
        t: &mut HashMap<ObjectId, Entry>,
        contained: &[ObjectId],
    ) -> Vec<ObjectId> {
        let mut borrowed = Vec::new();
        for c in contained {
            if let Some(e) = t.get_mut(c) {
                if self.retain_entry(e, *c) {
                    borrowed.push(*c);
                }
            } else if self.is_foreign(*c) {
                t.insert(*c, self.borrowed_entry());
                borrowed.push(*c);
            }
        }
        borrowed
    }

    /// A new entry for another node's object that this node only holds references to.
    fn borrowed_entry(&self) -> Entry {
        Entry {
            state: ObjectState::Elsewhere,
            refs: 1,
            contained: Vec::new(),
            notify: None,
            last_used: self.tick(),
            kept_elsewhere: false,
            hosted: false,
            held: 0,
            borrowing: false,
        }
    }

    fn borrow_all(&self, ids: Vec<ObjectId>) {
        if let Some(remote) = self.remote.get() {
            for id in ids {
                remote.borrow(id);
            }
        }
    }

    /// A new entry for an object whose task has not run yet, with `refs` counts.
    fn pending_entry(&self, refs: u64) -> Entry {
        Entry {
            state: ObjectState::Pending,
            refs,
            contained: Vec::new(),
            notify: Some(Arc::new(Notify::new())),
            last_used: self.tick(),
            kept_elsewhere: false,
            hosted: false,
            held: 0,
            borrowing: false,
        }
    }

    /// Adds an object whose task has not run yet, unless `id` is in use: returns whether it
    /// did. (For a call run here for another node, whose result id comes from that node.)
    pub fn insert_pending_new(&self, id: ObjectId, refs: u64) -> bool {
        let mut t = self.lock();
        if t.contains_key(&id) {
            return false;
        }
        let e = self.pending_entry(refs);
        t.insert(id, e);
        true
    }

    /// Adds an object whose task has not run yet.
    pub fn insert_pending(&self, id: ObjectId, refs: u64) {
        let e = self.pending_entry(refs);
        self.lock().insert(id, e);
    }

    /// Records the outcome of the task producing `id` and wakes its waiters, in one step:
    /// the result retains the refs it contains, the task's own references (`finished_with`,
    /// plus its count on `id`) are released, and the outcome becomes visible, all under one
    /// lock. Whoever sees the object complete therefore also sees the task's references gone.
    pub fn complete(
        &self,
        id: ObjectId,
        outcome: Result<(Completed, Vec<ObjectId>), Arc<TaskError>>,
        finished_with: &[ObjectId],
    ) {
        let mut freed = Released::default();
        let borrowed;
        let notify = {
            let mut t = self.lock();
            let contained = match &outcome {
                Ok((_, contained)) => contained.clone(),
                Err(_) => Vec::new(),
            };
            borrowed = self.retain_contained(&mut t, &contained);
            release_locked(&mut t, finished_with, &mut freed);
            // A call run here for a peer: its count on its own result was held for the
            // cluster (`mark_hosted`), not a reference of this node's.
            if let Some(e) = t.get_mut(&id)
                && e.hosted
                && e.held > 0
            {
                e.held -= 1;
            }
            let notify = match t.get_mut(&id) {
                Some(e) => {
                    e.state = match outcome {
                        Ok((Completed::Local(bytes), _)) => ObjectState::Ready(bytes),
                        Ok((Completed::Elsewhere, _)) => {
                            e.kept_elsewhere = true;
                            ObjectState::Elsewhere
                        }
                        Err(err) => ObjectState::Failed(err),
                    };
                    e.contained = contained;
                    e.notify.take()
                }
                // Nobody wanted the result: give back what it would have held.
                None => {
                    release_locked(&mut t, &contained, &mut freed);
                    if let Ok((Completed::Elsewhere, _)) = outcome
                        && let Some(remote) = self.remote.get()
                    {
                        remote.freed(id);
                    }
                    None
                }
            };
            release_locked(&mut t, &[id], &mut freed);
            notify
        };
        // Borrows are registered before the releases that could free what they borrow.
        self.borrow_all(borrowed);
        self.dispose(freed);
        if let Some(n) = notify {
            n.notify_waiters();
        }
        self.any_completed.notify_waiters();
    }

    /// Adds one reference to `id`. Returns false if the object does not exist. An object
    /// another node owns and this node keeps no copy of is counted by its owner, not here:
    /// that is `true` without a count.
    pub fn retain(&self, id: ObjectId) -> bool {
        let mut t = self.lock();
        match t.get_mut(&id) {
            Some(e) => {
                if self.retain_entry(e, id) {
                    drop(t);
                    self.borrow_all(vec![id]);
                }
                true
            }
            None if self.is_foreign(id) => {
                t.insert(id, self.borrowed_entry());
                drop(t);
                if let Some(remote) = self.remote.get() {
                    remote.borrow(id);
                }
                true
            }
            None => false,
        }
    }

    /// Marks `id`, just inserted pending with two counts for a call run here for its owner,
    /// as a copy kept for that owner (see [`release_hosted`](Self::release_hosted)): both
    /// counts, the owner's and the call's, are held for the cluster, not references of this
    /// node's, so they register no borrow; a reference of this node's own does.
    pub fn mark_hosted(&self, id: ObjectId) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.hosted = true;
            e.held = 2;
        }
    }

    /// Drops the count a copy kept for its owner holds, once (a repeated or stray `FreeCopy`
    /// changes nothing).
    pub fn release_hosted(&self, id: ObjectId) {
        let mut freed = Released::default();
        {
            let mut t = self.lock();
            match t.get_mut(&id) {
                Some(e) if e.hosted => {
                    e.hosted = false;
                    e.held = e.held.saturating_sub(1);
                }
                _ => return,
            }
            release_locked(&mut t, &[id], &mut freed);
        }
        self.dispose(freed);
    }

    /// Removes one reference from `id`, freeing it (and releasing what it contains) at zero.
    pub fn release(&self, id: ObjectId) {
        self.release_all(&[id]);
    }

    /// Removes one reference from each id.
    pub fn release_all(&self, ids: &[ObjectId]) {
        if ids.is_empty() {
            return;
        }
        let mut freed = Released::default();
        release_locked(&mut self.lock(), ids, &mut freed);
        // Dropping entries returns their space to the store; do it outside the table lock.
        self.dispose(freed);
    }

    /// Whether the table has an entry for `id`.
    pub fn contains(&self, id: ObjectId) -> bool {
        self.lock().contains_key(&id)
    }

    /// The object's current state, or `None` if it does not exist.
    pub fn state(&self, id: ObjectId) -> Option<ObjectState> {
        self.lock().get(&id).map(|e| e.state.clone())
    }

    /// Where the object is now, or `None` if it has been freed (or, for another node's
    /// object, never referenced here).
    pub fn location(&self, id: ObjectId) -> Option<ObjectLocation> {
        let state = self.state(id)?;
        Some(match state {
            ObjectState::Pending => ObjectLocation::Pending,
            ObjectState::Ready(_) => ObjectLocation::Memory,
            ObjectState::Spilled(_) => ObjectLocation::Disk,
            ObjectState::Failed(_) => ObjectLocation::Failed,
            ObjectState::Elsewhere => match self.remote.get() {
                Some(remote) => remote.location(id),
                None => ObjectLocation::Lost(NodeId(id.owner())),
            },
        })
    }

    /// The refs the object contains.
    pub fn contained(&self, id: ObjectId) -> Vec<ObjectId> {
        self.lock()
            .get(&id)
            .map(|e| e.contained.clone())
            .unwrap_or_default()
    }

    /// Waits until the object is ready or failed, reading it back from disk if it was
    /// spilled. A failed task is an `Err(GetError::Task)`.
    pub async fn wait_ready(
        &self,
        id: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<Arc<Sealed>, GetError> {
        let fut = async {
            loop {
                let mut pull_home = false;
                let notify = {
                    let mut t = self.lock();
                    if self.elsewhere(&t, id) {
                        return Err(GetError::Unavailable {
                            id,
                            reason: "owned by another node; read it with wait_object".into(),
                        });
                    }
                    let e = self.touch(&mut t, id)?;
                    match &e.state {
                        // Our own object kept by the node that ran its task (`elsewhere`
                        // above covers other nodes' objects).
                        ObjectState::Elsewhere => {
                            pull_home = true;
                            None
                        }
                        ObjectState::Ready(b) => return Ok(b.clone()),
                        ObjectState::Spilled(s) => {
                            let s = s.clone();
                            drop(t);
                            // Reading back is blocking file I/O of one object.
                            return self.restore(id, s);
                        }
                        ObjectState::Failed(err) => return Err(GetError::Task((**err).clone())),
                        ObjectState::Pending => match &e.notify {
                            Some(n) => Some(n.clone()),
                            None => return Err(GetError::ObjectLost { id }),
                        },
                    }
                };
                let Some(notify) = notify else {
                    if pull_home {
                        return self.pull_home(id).await;
                    }
                    continue;
                };
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // Re-check: the state may have changed before `enable` registered us.
                if !matches!(self.state(id), Some(ObjectState::Pending)) {
                    continue;
                }
                notified.await;
            }
        };
        match timeout {
            None => fut.await,
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .unwrap_or(Err(GetError::Timeout { id, timeout: t })),
        }
    }

    /// Pulls an object this node owns from the node holding it, and keeps the copy.
    async fn pull_home(&self, id: ObjectId) -> Result<Arc<Sealed>, GetError> {
        let remote = self.remote.get().ok_or(GetError::ObjectLost { id })?;
        let (sealed, _) = remote.fetch(id).await?;
        let mut t = self.lock();
        let e = self.touch(&mut t, id)?;
        match &e.state {
            ObjectState::Elsewhere => {
                e.state = ObjectState::Ready(sealed.clone());
                Ok(sealed)
            }
            // Another reader pulled it first.
            ObjectState::Ready(other) => Ok(other.clone()),
            _ => Err(GetError::ObjectLost { id }),
        }
    }

    /// Like [`wait_ready`](Self::wait_ready), and also reads objects other nodes own (a copy
    /// pulled for the caller, not kept). Returns the object and the refs it contains.
    pub async fn wait_object(
        &self,
        id: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<(Arc<Sealed>, Vec<ObjectId>), GetError> {
        let elsewhere = self.elsewhere(&self.lock(), id);
        if !elsewhere {
            let sealed = self.wait_ready(id, timeout).await?;
            return Ok((sealed, self.contained(id)));
        }
        let Some(remote) = self.remote.get() else {
            return Err(GetError::ObjectLost { id });
        };
        let fut = remote.fetch(id);
        match timeout {
            None => fut.await,
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .unwrap_or(Err(GetError::Timeout { id, timeout: t })),
        }
    }

    /// Waits until at least `num_ready` of `ids` are ready or failed, or the timeout passes.
    /// Returns one flag per id, set for the ids `report` asks for. Unknown ids count as ready
    /// (a `get` reports them).
    pub async fn wait_many(
        &self,
        ids: &[ObjectId],
        num_ready: usize,
        timeout: Option<Duration>,
        report: WaitFlags,
    ) -> Vec<bool> {
        let num_ready = num_ready.min(ids.len());
        // Objects other nodes own and this one has no entry for: their owners say when they
        // are done (a watcher per id, on the network's runtime, sets its flag).
        let watched = Arc::new(ForeignWait {
            done: ids.iter().map(|_| AtomicBool::new(false)).collect(),
            notify: Notify::new(),
        });
        let mut watching = false;
        if let Some(remote) = self.remote.get() {
            let t = self.lock();
            for (i, id) in ids.iter().enumerate() {
                if self.elsewhere(&t, *id) {
                    watching = true;
                    let w = watched.clone();
                    remote.watch_done(
                        *id,
                        Arc::downgrade(&watched),
                        Box::new(move || {
                            w.done[i].store(true, Ordering::SeqCst);
                            w.notify.notify_waiters();
                        }),
                    );
                }
            }
        }
        let flags = || {
            let t = self.lock();
            let mut done = 0;
            ids.iter()
                .enumerate()
                .map(|(i, id)| {
                    if report == WaitFlags::First && done == num_ready {
                        return false;
                    }
                    let d = match t.get(id) {
                        _ if watching && self.elsewhere(&t, *id) => {
                            watched.done[i].load(Ordering::SeqCst)
                        }
                        Some(e) => !matches!(e.state, ObjectState::Pending),
                        // Unknown ids count as done: a `get` reports them.
                        None => true,
                    };
                    done += usize::from(d);
                    d
                })
                .collect::<Vec<bool>>()
        };
        let fut = async {
            loop {
                let notified = self.any_completed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let remote_done = watched.notify.notified();
                tokio::pin!(remote_done);
                remote_done.as_mut().enable();
                let f = flags();
                if f.iter().filter(|&&b| b).count() >= num_ready {
                    return f;
                }
                tokio::select! {
                    () = notified => {}
                    () = remote_done => {}
                }
            }
        };
        match timeout {
            None => fut.await,
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(f) => f,
                Err(_) => flags(),
            },
        }
    }

    /// The table's figures.
    pub fn stats(&self) -> TableStats {
        let t = self.lock();
        let mut s = TableStats {
            objects: t.len() as u64,
            ..Default::default()
        };
        for e in t.values() {
            match e.state {
                ObjectState::Pending => s.pending += 1,
                ObjectState::Failed(_) => s.failed += 1,
                ObjectState::Ready(_) | ObjectState::Spilled(_) | ObjectState::Elsewhere => {}
            }
        }
        s
    }

    /// The reference count of `id` (for tests and diagnostics).
    pub fn ref_count(&self, id: ObjectId) -> Option<u64> {
        self.lock().get(&id).map(|e| e.refs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the table asks of the cluster.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Recorder {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl RemoteObjects for Recorder {
        fn fetch(&self, id: ObjectId) -> BoxFuture<Result<ObjectWithRefs, GetError>> {
            Box::pin(async move { Err(GetError::ObjectLost { id }) })
        }
        fn freed(&self, id: ObjectId) {
            self.0.lock().unwrap().push(format!("freed {}", id.seq()));
        }
        fn location(&self, _id: ObjectId) -> ObjectLocation {
            ObjectLocation::Lost(NodeId(0))
        }
        fn borrow(&self, id: ObjectId) {
            self.0.lock().unwrap().push(format!("borrow {}", id.seq()));
        }
        fn unborrow(&self, id: ObjectId) {
            self.0
                .lock()
                .unwrap()
                .push(format!("unborrow {}", id.seq()));
        }
        fn watch_done(
            &self,
            _id: ObjectId,
            _interest: std::sync::Weak<ForeignWait>,
            _done: Box<dyn FnOnce() + Send>,
        ) {
        }
    }

    fn table() -> (ObjectTable, Arc<Recorder>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path(), 1 << 20).unwrap();
        let t = ObjectTable::new(store, None);
        t.set_local(NodeId::new(1, 1));
        let r = Arc::new(Recorder::default());
        t.set_remote(r.clone());
        (t, r, dir)
    }

    /// The flaw the simulator found (docs/simulator.md): a reference of this node's own to a
    /// copy it keeps for the owner must register a borrow, or the owner frees the object while
    /// this node still references it.
    #[test]
    fn a_reference_to_a_copy_kept_for_its_owner_borrows_it() {
        let (t, r, _dir) = table();
        let owner = NodeId::new(2, 1);
        let x = ObjectId::new(owner.0, 7);
        // A call run here for the owner: its result is held for the cluster, twice.
        t.insert_pending(x, 2);
        t.mark_hosted(x);
        assert!(r.take().is_empty(), "the cluster's counts borrow nothing");
        // Another call here takes it as an argument: this node now references it.
        assert!(t.retain(x));
        assert_eq!(r.take(), vec!["borrow 7"]);
        assert!(t.retain(x));
        assert!(r.take().is_empty(), "one borrow per node");
        t.release(x);
        assert!(r.take().is_empty());
        t.release(x);
        assert_eq!(
            r.take(),
            vec!["unborrow 7"],
            "only the cluster's counts are left"
        );
        // The call ends, and the owner frees its copy: the entry goes without another
        // unborrow.
        let layout = Layout::plan(8, &[]).unwrap();
        let sealed = t.allocate(layout).unwrap().seal();
        t.complete(x, Ok((Completed::Local(sealed), Vec::new())), &[]);
        assert_eq!(t.ref_count(x), Some(1));
        t.release_hosted(x);
        assert_eq!(t.ref_count(x), None);
        assert!(r.take().is_empty());
    }

    #[test]
    fn a_copy_still_referenced_here_when_its_owner_frees_it_keeps_its_borrow_until_freed() {
        let (t, r, _dir) = table();
        let x = ObjectId::new(NodeId::new(2, 1).0, 8);
        t.insert_pending(x, 2);
        t.mark_hosted(x);
        let sealed = t.allocate(Layout::plan(8, &[]).unwrap()).unwrap().seal();
        t.complete(x, Ok((Completed::Local(sealed), Vec::new())), &[]);
        assert!(t.retain(x));
        assert_eq!(r.take(), vec!["borrow 8"]);
        t.release_hosted(x);
        assert!(r.take().is_empty(), "still referenced here");
        t.release(x);
        assert_eq!(r.take(), vec!["unborrow 8"]);
        assert_eq!(t.ref_count(x), None);
    }

    #[test]
    fn freeing_an_object_kept_elsewhere_tells_the_cluster_once() {
        let (t, r, _dir) = table();
        let x = ObjectId::new(NodeId::new(1, 1).0, 9);
        // A handle's count and the call's, which ran on another node and left its result there.
        t.insert_pending(x, 2);
        t.complete(x, Ok((Completed::Elsewhere, Vec::new())), &[]);
        assert!(matches!(t.state(x), Some(ObjectState::Elsewhere)));
        assert_eq!(
            t.location(x),
            Some(ObjectLocation::Lost(NodeId(0))),
            "the cluster answers"
        );
        assert!(r.take().is_empty());
        t.release(x);
        assert_eq!(r.take(), vec!["freed 9"]);
        assert_eq!(t.location(x), None);
    }

    #[test]
    fn another_nodes_object_referenced_here_is_borrowed_once_and_given_back() {
        let (t, r, _dir) = table();
        let x = ObjectId::new(NodeId::new(2, 1).0, 10);
        assert!(t.retain(x));
        assert!(t.retain(x));
        assert_eq!(r.take(), vec!["borrow 10"]);
        t.release(x);
        assert!(r.take().is_empty());
        t.release(x);
        assert_eq!(
            r.take(),
            vec!["unborrow 10"],
            "no `freed`: not this node's object"
        );
    }
}

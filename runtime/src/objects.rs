//! The object table: what each object id on this node is (pending, ready, failed), who holds
//! it (reference counts), which refs it contains, and who is waiting for it.
//!
//! An object is freed when its count reaches zero. Counts come from driver handles (through
//! the ref hooks in [`crate::codec`]), from objects that contain the id, from tasks that take
//! it as an argument or produce it, and from running guests that were given it. Freeing an
//! object releases the refs it contains, so a chain of nested objects goes in one step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_abi::ObjectId;
use tokio::sync::Notify;

use crate::error::{GetError, TaskError};
use crate::store::Sealed;

/// What an object is now.
#[derive(Debug, Clone)]
pub enum ObjectState {
    /// Its task has not finished.
    Pending,
    /// Sealed in the store. Holding the `Arc` pins the bytes.
    Ready(Arc<Sealed>),
    /// Its task failed.
    Failed(Arc<TaskError>),
}

#[derive(Debug)]
struct Entry {
    state: ObjectState,
    refs: u64,
    contained: Vec<ObjectId>,
    notify: Option<Arc<Notify>>,
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
struct Freed(Entry);

impl Drop for Freed {
    fn drop(&mut self) {
        if let Some(n) = self.0.notify.take() {
            n.notify_waiters();
        }
    }
}

/// Removes one reference from each id, freeing at zero and cascading to the refs a freed
/// object contained. Freed entries go to `freed`, to be dropped after the lock is released.
fn release_locked(t: &mut HashMap<ObjectId, Entry>, ids: &[ObjectId], freed: &mut Vec<Freed>) {
    let mut work: Vec<ObjectId> = ids.to_vec();
    while let Some(id) = work.pop() {
        let Some(e) = t.get_mut(&id) else { continue };
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0
            && let Some(e) = t.remove(&id)
        {
            work.extend_from_slice(&e.contained);
            freed.push(Freed(e));
        }
    }
}

/// The object table of one node.
#[derive(Debug, Default)]
pub struct ObjectTable {
    entries: Mutex<HashMap<ObjectId, Entry>>,
    /// Woken on every completion; `wait` listens to it.
    any_completed: Notify,
}

impl ObjectTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectId, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
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
        for c in &contained {
            if let Some(e) = t.get_mut(c) {
                e.refs += 1;
            }
        }
        t.insert(
            id,
            Entry {
                state: ObjectState::Ready(bytes),
                refs,
                contained,
                notify: None,
            },
        );
    }

    /// Adds an object whose task has not run yet.
    pub fn insert_pending(&self, id: ObjectId, refs: u64) {
        self.lock().insert(
            id,
            Entry {
                state: ObjectState::Pending,
                refs,
                contained: Vec::new(),
                notify: Some(Arc::new(Notify::new())),
            },
        );
    }

    /// Records the outcome of the task producing `id` and wakes its waiters, in one step:
    /// the result retains the refs it contains, the task's own references (`finished_with`,
    /// plus its count on `id`) are released, and the outcome becomes visible, all under one
    /// lock. Whoever sees the object complete therefore also sees the task's references gone.
    pub fn complete(
        &self,
        id: ObjectId,
        outcome: Result<(Arc<Sealed>, Vec<ObjectId>), Arc<TaskError>>,
        finished_with: &[ObjectId],
    ) {
        let mut freed = Vec::new();
        let notify = {
            let mut t = self.lock();
            let contained = match &outcome {
                Ok((_, contained)) => contained.clone(),
                Err(_) => Vec::new(),
            };
            for c in &contained {
                if let Some(e) = t.get_mut(c) {
                    e.refs += 1;
                }
            }
            release_locked(&mut t, finished_with, &mut freed);
            let notify = match t.get_mut(&id) {
                Some(e) => {
                    e.state = match outcome {
                        Ok((bytes, _)) => ObjectState::Ready(bytes),
                        Err(err) => ObjectState::Failed(err),
                    };
                    e.contained = contained;
                    e.notify.take()
                }
                // Nobody wanted the result: give back what it would have held.
                None => {
                    release_locked(&mut t, &contained, &mut freed);
                    None
                }
            };
            release_locked(&mut t, &[id], &mut freed);
            notify
        };
        drop(freed);
        if let Some(n) = notify {
            n.notify_waiters();
        }
        self.any_completed.notify_waiters();
    }

    /// Adds one reference to `id`. Returns false if the object does not exist.
    pub fn retain(&self, id: ObjectId) -> bool {
        match self.lock().get_mut(&id) {
            Some(e) => {
                e.refs += 1;
                true
            }
            None => false,
        }
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
        let mut freed = Vec::new();
        release_locked(&mut self.lock(), ids, &mut freed);
        // Dropping entries returns their space to the store; do it outside the table lock.
        drop(freed);
    }

    /// The object's current state, or `None` if it does not exist.
    pub fn state(&self, id: ObjectId) -> Option<ObjectState> {
        self.lock().get(&id).map(|e| e.state.clone())
    }

    /// The refs the object contains.
    pub fn contained(&self, id: ObjectId) -> Vec<ObjectId> {
        self.lock()
            .get(&id)
            .map(|e| e.contained.clone())
            .unwrap_or_default()
    }

    /// Waits until the object is ready or failed. A failed task is an `Err(GetError::Task)`.
    pub async fn wait_ready(
        &self,
        id: ObjectId,
        timeout: Option<Duration>,
    ) -> Result<Arc<Sealed>, GetError> {
        let fut = async {
            loop {
                let notify = {
                    let t = self.lock();
                    let Some(e) = t.get(&id) else {
                        return Err(GetError::ObjectLost { id });
                    };
                    match &e.state {
                        ObjectState::Ready(b) => return Ok(b.clone()),
                        ObjectState::Failed(err) => return Err(GetError::Task((**err).clone())),
                        ObjectState::Pending => match &e.notify {
                            Some(n) => n.clone(),
                            None => return Err(GetError::ObjectLost { id }),
                        },
                    }
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

    /// Waits until at least `num_ready` of `ids` are ready or failed, or the timeout passes.
    /// Returns one flag per id. Unknown ids count as ready (a `get` reports them).
    pub async fn wait_many(
        &self,
        ids: &[ObjectId],
        num_ready: usize,
        timeout: Option<Duration>,
    ) -> Vec<bool> {
        let num_ready = num_ready.min(ids.len());
        let flags = || {
            let t = self.lock();
            ids.iter()
                .map(|id| !matches!(t.get(id).map(|e| &e.state), Some(ObjectState::Pending)))
                .collect::<Vec<bool>>()
        };
        let fut = async {
            loop {
                let notified = self.any_completed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let f = flags();
                if f.iter().filter(|&&b| b).count() >= num_ready {
                    return f;
                }
                notified.await;
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
                ObjectState::Ready(_) => {}
            }
        }
        s
    }

    /// The reference count of `id` (for tests and diagnostics).
    pub fn ref_count(&self, id: ObjectId) -> Option<u64> {
        self.lock().get(&id).map(|e| e.refs)
    }
}

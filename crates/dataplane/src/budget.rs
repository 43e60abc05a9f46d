//! The node-wide memory budget: the sum of `memory_mb` over live process instances stays under
//! it. A start that needs room evicts the least recently used idle instances of other functions;
//! when nothing can be evicted the start is refused.
//!
//! A reservation is held by the instance's slot and given back when the slot goes, whatever the
//! way (idle stop, crash, eviction, delete). wasm instances are not counted: a wasm "instance" is
//! a loaded component, and each request's own memory is bounded by its `memory_mb` and the
//! function's concurrency inside Petrel's process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// What holds instances the budget may stop: a pool.
pub(crate) trait Evictable: Send + Sync {
    /// The idle instance an eviction would stop here, if any: when it was last used, and its
    /// slot.
    fn oldest_evictable(&self) -> Option<(Instant, u64)>;
    /// Stops that idle instance; false if it is busy now (or gone).
    fn evict(&self, slot: u64) -> bool;
}

pub struct MemoryBudget {
    limit_mb: AtomicU64,
    used_mb: AtomicU64,
    holders: Mutex<Vec<Weak<dyn Evictable>>>,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit_mb", &self.limit_mb())
            .field("used_mb", &self.used_mb())
            .finish()
    }
}

/// Memory held for one instance; returned on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    mb: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used_mb.fetch_sub(self.mb, Ordering::AcqRel);
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self {
            limit_mb: AtomicU64::new(u64::MAX),
            used_mb: AtomicU64::new(0),
            holders: Mutex::new(Vec::new()),
        }
    }
}

impl MemoryBudget {
    pub fn set_limit_mb(&self, mb: u64) {
        self.limit_mb.store(mb, Ordering::Relaxed);
    }

    pub fn limit_mb(&self) -> u64 {
        self.limit_mb.load(Ordering::Relaxed)
    }

    pub fn used_mb(&self) -> u64 {
        self.used_mb.load(Ordering::Relaxed)
    }

    pub(crate) fn register(&self, holder: Weak<dyn Evictable>) {
        let mut holders = self.holders.lock().unwrap();
        holders.retain(|p| p.strong_count() > 0);
        holders.push(holder);
    }

    /// Takes `mb` if it fits now; never waits, never evicts.
    pub(crate) fn try_reserve(self: &Arc<Self>, mb: u64) -> Option<Reservation> {
        let limit = self.limit_mb();
        self.used_mb
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(mb).filter(|&n| n <= limit)
            })
            .ok()?;
        Some(Reservation {
            budget: self.clone(),
            mb,
        })
    }

    /// Stops the least recently used idle instance of any holder but `except`; false when there
    /// is none. Asks one holder at a time, so it may run while no pool lock is held only.
    pub(crate) fn evict_one(&self, except: &dyn Evictable) -> bool {
        let holders: Vec<Arc<dyn Evictable>> = self
            .holders
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|h| !std::ptr::addr_eq(Arc::as_ptr(h), except))
            .collect();
        let oldest = holders
            .iter()
            .filter_map(|h| h.oldest_evictable().map(|(at, id)| (at, id, h)))
            .min_by_key(|(at, _, _)| *at);
        match oldest {
            Some((_, id, holder)) => holder.evict(id),
            None => false,
        }
    }
}

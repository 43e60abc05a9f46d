//! The node-wide memory budget: the sum of `memory_mb` over live process instances stays under
//! it. A start that needs room evicts the least recently used idle instances of other functions;
//! when nothing can be evicted the start is refused.
//!
//! A reservation is held by the instance's slot and given back when the slot goes, whatever the
//! way (idle stop, crash, eviction, delete). wasm instances are not counted: a wasm "instance" is
//! a loaded component, and each request's own memory is bounded by its `memory_mb` and the
//! function's concurrency inside Petrel's process.

use crate::pool::Pool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

#[derive(Debug)]
pub struct MemoryBudget {
    limit_mb: AtomicU64,
    used_mb: AtomicU64,
    pools: Mutex<Vec<Weak<Pool>>>,
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
            pools: Mutex::new(Vec::new()),
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

    pub(crate) fn register(&self, pool: &Arc<Pool>) {
        let mut pools = self.pools.lock().unwrap();
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
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

    /// Stops the least recently used idle instance of any pool but `except`; false when there
    /// is none. Locks one pool at a time, so it may run while no pool lock is held only.
    pub(crate) fn evict_one(&self, except: &Pool) -> bool {
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|p| !std::ptr::eq(p.as_ref(), except))
            .collect();
        let oldest = pools
            .iter()
            .filter_map(|p| p.oldest_evictable().map(|(at, id)| (at, id, p)))
            .min_by_key(|(at, _, _)| *at);
        match oldest {
            Some((_, id, pool)) => pool.evict(id),
            None => false,
        }
    }
}

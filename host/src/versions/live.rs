//! What serves each component right now: one atomically swappable pointer
//! per component.
//!
//! An invocation takes its version with [`ComponentSlot::pick`], a lock-free
//! load that clones an `Arc`. A deploy builds the new [`Serving`] completely
//! (compiled, checked, pre-instantiated) and then stores it in one atomic
//! swap. Invariants:
//! - an invocation runs start to end on the version it picked: it holds its
//!   own `Arc`, which a swap does not touch;
//! - a replaced version is freed when its last invocation ends (the last
//!   `Arc` drops), never before;
//! - a merchant's canary bucket depends only on the component name and the
//!   merchant, so a merchant stays on one side while the split is unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::engine::{ComponentSpec, LoadedComponent};

/// The versions serving one component.
pub struct Serving {
    pub primary: Arc<LoadedComponent>,
    pub canary: Option<Canary>,
    /// The control-store generation this came from (0: not from the store).
    pub generation: i64,
}

/// A second version taking a share of invocations.
pub struct Canary {
    pub version: Arc<LoadedComponent>,
    /// 1..=99: the buckets (of 100) that go to the canary.
    pub percent: u8,
}

/// One component: its manifest entry and what serves it.
pub struct ComponentSlot {
    pub spec: ComponentSpec,
    serving: ArcSwap<Serving>,
}

impl ComponentSlot {
    pub fn new(spec: ComponentSpec, serving: Serving) -> Self {
        Self { spec, serving: ArcSwap::from_pointee(serving) }
    }

    /// The version an invocation keyed by `sticky` (a merchant id, a shard,
    /// a record key) runs on.
    pub fn pick(&self, sticky: &[u8]) -> Arc<LoadedComponent> {
        let serving = self.serving.load();
        match &serving.canary {
            Some(canary) if bucket(&self.spec.name, sticky) < canary.percent => canary.version.clone(),
            _ => serving.primary.clone(),
        }
    }

    /// What serves now.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.load_full()
    }

    /// Makes `next` serve; invocations already running keep their version.
    pub fn swap(&self, next: Serving) {
        self.serving.store(Arc::new(next));
    }
}

/// Every component of the application, by name. The set is fixed by the
/// manifest; what serves each one changes.
#[derive(Default)]
pub struct Registry {
    slots: BTreeMap<String, Arc<ComponentSlot>>,
}

impl Registry {
    pub fn insert(&mut self, slot: ComponentSlot) {
        self.slots.insert(slot.spec.name.clone(), Arc::new(slot));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ComponentSlot>> {
        self.slots.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ComponentSlot>> + '_ {
        self.slots.values()
    }
}

/// The canary bucket (0..100) of `sticky` for `component`: FNV-1a over both,
/// so buckets are stable across hosts and restarts and independent between
/// components.
pub fn bucket(component: &str, sticky: &[u8]) -> u8 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in component.as_bytes().iter().chain(&[0xff]).chain(sticky) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Fold the high bits in: FNV's low bits alone are weakly mixed.
    ((hash ^ (hash >> 32)) % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_are_stable_and_roughly_uniform() {
        assert_eq!(bucket("authorize", b"42"), bucket("authorize", b"42"));
        let mut counts = [0u32; 100];
        for merchant in 0..100_000u32 {
            counts[usize::from(bucket("authorize", merchant.to_string().as_bytes()))] += 1;
        }
        // 1,000 expected per bucket.
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
        let under_10: u32 = counts[..10].iter().sum();
        assert!((9_500..10_500).contains(&under_10), "{under_10}");
    }
}

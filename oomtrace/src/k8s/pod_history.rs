//! What the pod index answers beyond kube's reflector store: lookups by container ID
//! (including IDs a container had before) and by pod UID, and deleted pods (tombstones).
//!
//! * Besides the current and `lastState` IDs of every container, a pod keeps up to
//!   [`MAX_RETIRED_IDS_PER_POD`] IDs that its containers had in earlier updates. A lookup
//!   through such an older ID returns the container as it is *now*.
//! * Deleted pods become *tombstones*: their last known record (with `deleted: true`) stays
//!   resolvable for a TTL, so a kill that races the pod's deletion still resolves. At most
//!   `max_tombstones` are kept, the oldest deletion being evicted first. Expired tombstones
//!   are never returned, and are pruned on every event and on a timer.
//!
//! The records are the store's own `Arc`s: this index adds keys, not copies.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use kube::runtime::{
    reflector::{ObjectRef, Store},
    watcher,
};

use super::pod_record::{bare_container_id, ContainerInfo, IndexedPod, PodInfo};

/// Maximum number of former container IDs (beyond `lastState`) remembered per pod.
pub const MAX_RETIRED_IDS_PER_POD: usize = 16;

/// A pod and the IDs its containers had before: (ID, index of the container now).
#[derive(Debug, Clone)]
struct Slot {
    pod: Arc<IndexedPod>,
    retired: Vec<(Box<str>, usize)>,
}

impl Slot {
    fn new(pod: Arc<IndexedPod>) -> Self {
        Self {
            pod,
            retired: Vec::new(),
        }
    }

    /// Current IDs first, then retired ones, newest first.
    fn ids(&self) -> impl Iterator<Item = (&str, usize)> {
        self.pod
            .container_ids()
            .chain(self.retired.iter().map(|(id, i)| (&**id, *i)))
    }

    /// Keeps the IDs the pod's containers had in `old` (and not now) as aliases, by
    /// container name and kind, at most [`MAX_RETIRED_IDS_PER_POD`] of them (the newest).
    fn carry_over(&mut self, old: &Slot) {
        let containers = self.pod.containers();
        let known: HashSet<&str> = self.ids().map(|(id, _)| id).collect();
        let retired: Vec<(Box<str>, usize)> = old
            .ids()
            .filter(|(id, _)| !known.contains(id))
            .filter_map(|(id, idx)| {
                let was = old.pod.containers().get(idx)?;
                let now = containers
                    .iter()
                    .position(|c| c.name == was.name && c.kind == was.kind)?;
                Some((Box::from(id), now))
            })
            .collect();
        self.retired.extend(retired);
        self.retired.truncate(MAX_RETIRED_IDS_PER_POD);
    }
}

#[derive(Debug)]
struct Tombstone {
    slot: Slot,
    deleted_at: Instant,
    seq: u64,
}

/// Container ID -> (pod, container index).
type IdIndex = HashMap<Box<str>, (Arc<IndexedPod>, usize)>;

fn index_ids(ids: &mut IdIndex, slot: &Slot) {
    for (id, idx) in slot.ids() {
        ids.insert(Box::from(id), (slot.pod.clone(), idx));
    }
}

fn unindex_ids(ids: &mut IdIndex, slot: &Slot) {
    let uid = slot.pod.uid();
    for (id, _) in slot.ids() {
        if ids.get(id).is_some_and(|(p, _)| p.uid() == uid) {
            ids.remove(id);
        }
    }
}

/// Live pods by UID and container ID, and tombstones. Every time-dependent method takes
/// `now`, so tests can use a fake clock.
#[derive(Debug)]
pub struct PodHistory {
    ttl: Duration,
    max_tombstones: usize,
    live: HashMap<Box<str>, Slot>,
    live_ids: IdIndex,
    tombstones: HashMap<Box<str>, Tombstone>,
    tomb_ids: IdIndex,
    /// (seq, uid) in deletion order; entries whose seq no longer matches are stale.
    tomb_order: VecDeque<(u64, Box<str>)>,
    next_seq: u64,
}

impl PodHistory {
    pub fn new(ttl: Duration, max_tombstones: usize) -> Self {
        Self {
            ttl,
            max_tombstones,
            live: HashMap::new(),
            live_ids: HashMap::new(),
            tombstones: HashMap::new(),
            tomb_ids: HashMap::new(),
            tomb_order: VecDeque::new(),
            next_seq: 0,
        }
    }

    fn is_expired(&self, t: &Tombstone, now: Instant) -> bool {
        now.saturating_duration_since(t.deleted_at) >= self.ttl
    }

    /// Follows one watcher event that `store` has already applied.
    pub fn follow(
        &mut self,
        store: &Store<IndexedPod>,
        event: &watcher::Event<IndexedPod>,
        now: Instant,
    ) {
        match event {
            watcher::Event::Apply(pod) => {
                // The store's own Arc, so the history shares the record instead of copying it.
                let stored = store.get(&ObjectRef::from_obj(pod));
                self.upsert(stored.unwrap_or_else(|| Arc::new(pod.clone())));
            }
            // The store has dropped it: this last state now lives in the tombstone only.
            watcher::Event::Delete(pod) => self.delete(Arc::new(pod.clone()), now),
            watcher::Event::InitDone => self.relisted(store.state(), now),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
        self.prune(now);
    }

    /// A pod was added or changed.
    fn upsert(&mut self, pod: Arc<IndexedPod>) {
        if pod.uid().is_empty() {
            return;
        }
        let uid: Box<str> = pod.uid().into();
        let mut slot = Slot::new(pod);
        // A pod we had as deleted is live again (e.g. a spurious relist gap).
        self.remove_tombstone(&uid);
        if let Some(old) = self.unindex_live(&uid) {
            slot.carry_over(&old);
        }
        index_ids(&mut self.live_ids, &slot);
        self.live.insert(uid, slot);
    }

    /// A pod was deleted; `pod` is its last state.
    fn delete(&mut self, pod: Arc<IndexedPod>, now: Instant) {
        if pod.uid().is_empty() {
            return;
        }
        let uid: Box<str> = pod.uid().into();
        let mut slot = Slot::new(pod);
        if let Some(old) = self.unindex_live(&uid) {
            slot.carry_over(&old);
        }
        if let Some(old) = self.remove_tombstone(&uid) {
            // Deleted twice (e.g. a Delete event then a relist): keep the first deletion time.
            slot.carry_over(&old.slot);
            self.insert_tombstone(slot, old.deleted_at);
        } else {
            self.insert_tombstone(slot, now);
        }
    }

    /// A relist completed with these pods: they replace the live set, and live pods that
    /// are not among them were deleted meanwhile.
    fn relisted(&mut self, listed: Vec<Arc<IndexedPod>>, now: Instant) {
        let seen: HashSet<&str> = listed.iter().map(|p| p.uid()).collect();
        let vanished: Vec<Arc<IndexedPod>> = self
            .live
            .iter()
            .filter(|(uid, _)| !seen.contains(&***uid))
            .map(|(_, slot)| slot.pod.clone())
            .collect();
        for pod in vanished {
            self.delete(pod, now);
        }
        for pod in listed {
            self.upsert(pod);
        }
    }

    fn unindex_live(&mut self, uid: &str) -> Option<Slot> {
        let old = self.live.remove(uid)?;
        unindex_ids(&mut self.live_ids, &old);
        Some(old)
    }

    fn remove_tombstone(&mut self, uid: &str) -> Option<Tombstone> {
        let t = self.tombstones.remove(uid)?;
        unindex_ids(&mut self.tomb_ids, &t.slot);
        Some(t)
    }

    fn insert_tombstone(&mut self, slot: Slot, deleted_at: Instant) {
        if self.max_tombstones == 0 {
            return;
        }
        let uid: Box<str> = slot.pod.uid().into();
        let seq = self.next_seq;
        self.next_seq += 1;
        index_ids(&mut self.tomb_ids, &slot);
        self.tombstones.insert(
            uid.clone(),
            Tombstone {
                slot,
                deleted_at,
                seq,
            },
        );
        // Keep `tomb_order` sorted by deletion time (re-insertions may carry an older time).
        let pos = self
            .tomb_order
            .iter()
            .rposition(|(s, u)| {
                self.tombstones
                    .get(u)
                    .is_some_and(|t| t.seq == *s && t.deleted_at <= deleted_at)
            })
            .map_or(0, |p| p + 1);
        if pos == self.tomb_order.len() {
            self.tomb_order.push_back((seq, uid));
        } else {
            self.tomb_order.insert(pos, (seq, uid));
        }
        while self.tombstones.len() > self.max_tombstones {
            let Some((s, u)) = self.tomb_order.pop_front() else {
                break;
            };
            if self.tombstones.get(&u).is_some_and(|t| t.seq == s) {
                self.remove_tombstone(&u);
            }
        }
        // Bound the stale entries left by resurrected pods.
        if self.tomb_order.len() > 2 * self.tombstones.len() + 64 {
            let tombstones = &self.tombstones;
            self.tomb_order
                .retain(|(s, u)| tombstones.get(u).is_some_and(|t| t.seq == *s));
        }
    }

    /// Drops expired tombstones (oldest first).
    pub fn prune(&mut self, now: Instant) {
        while let Some((s, u)) = self.tomb_order.front() {
            match self.tombstones.get(u) {
                Some(t) if t.seq == *s => {
                    if !self.is_expired(t, now) {
                        break;
                    }
                    let u = u.clone();
                    self.tomb_order.pop_front();
                    self.remove_tombstone(&u);
                }
                _ => {
                    self.tomb_order.pop_front();
                }
            }
        }
    }

    pub fn by_uid(&self, uid: &str, now: Instant) -> Option<PodInfo> {
        // The systemd cgroup driver spells pod UIDs with `_` instead of `-`.
        if uid.contains('_') {
            return self.by_uid(&uid.replace('_', "-"), now);
        }
        if let Some(slot) = self.live.get(uid) {
            return Some(slot.pod.info(false));
        }
        let t = self.tombstones.get(uid)?;
        (!self.is_expired(t, now)).then(|| t.slot.pod.info(true))
    }

    pub fn by_container_id(&self, id: &str, now: Instant) -> Option<(PodInfo, ContainerInfo)> {
        let id = bare_container_id(id)?;
        if let Some((pod, idx)) = self.live_ids.get(id) {
            return Some((pod.info(false), pod.container_info(*idx)?));
        }
        let (pod, idx) = self.tomb_ids.get(id)?;
        let t = self.tombstones.get(pod.uid())?;
        if self.is_expired(t, now) {
            return None;
        }
        Some((pod.info(true), pod.container_info(*idx)?))
    }

    /// (live pods, unexpired tombstones).
    pub fn len(&self, now: Instant) -> (usize, usize) {
        let tombs = self
            .tombstones
            .values()
            .filter(|t| !self.is_expired(t, now))
            .count();
        (self.live.len(), tombs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::pod_record::fixtures::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::reflector::{self, store::Writer};

    /// A history fed like the watcher task feeds it: each event goes through a reflector
    /// store first.
    struct State {
        writer: Writer<IndexedPod>,
        store: Store<IndexedPod>,
        history: PodHistory,
    }

    impl State {
        /// Returns true on `InitDone`.
        fn handle(&mut self, event: watcher::Event<Pod>, now: Instant) -> bool {
            let event = match event {
                watcher::Event::Apply(p) => watcher::Event::Apply(indexed(&p)),
                watcher::Event::Delete(p) => watcher::Event::Delete(indexed(&p)),
                watcher::Event::InitApply(p) => watcher::Event::InitApply(indexed(&p)),
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitDone => watcher::Event::InitDone,
            };
            self.writer.apply_watcher_event(&event);
            self.history.follow(&self.store, &event, now);
            matches!(event, watcher::Event::InitDone)
        }
    }

    impl std::ops::Deref for State {
        type Target = PodHistory;
        fn deref(&self) -> &PodHistory {
            &self.history
        }
    }

    impl std::ops::DerefMut for State {
        fn deref_mut(&mut self) -> &mut PodHistory {
            &mut self.history
        }
    }

    fn state(ttl_secs: u64, max: usize) -> State {
        let (store, writer) = reflector::store();
        State {
            writer,
            store,
            history: PodHistory::new(Duration::from_secs(ttl_secs), max),
        }
    }

    #[test]
    fn pods_without_uid_are_not_indexed() {
        let t0 = Instant::now();
        let mut s = state(600, 100);
        let mut pod = simple_pod("u1", 1);
        pod.metadata.uid = None;
        s.handle(watcher::Event::Apply(pod.clone()), t0);
        s.handle(watcher::Event::Delete(pod), t0);
        assert_eq!(s.len(t0), (0, 0));
        assert!(s.by_container_id(&hex_id(1), t0).is_none());
    }

    #[test]
    fn lookups_and_updates() {
        let t0 = Instant::now();
        let mut s = state(600, 100);
        s.handle(watcher::Event::Apply(simple_pod("u1", 1)), t0);
        let (p, c) = s
            .by_container_id(&format!("containerd://{}", hex_id(1)), t0)
            .unwrap();
        assert_eq!((p.uid.as_str(), c.name.as_str()), ("u1", "app"));
        assert_eq!(c.limits_memory_bytes, Some(256 << 20));
        assert_eq!(c.requests_memory_bytes, Some(128 << 20));
        assert_eq!(s.by_container_id(&hex_id(1), t0).unwrap().0.uid, "u1");
        assert!(s.by_uid("u1", t0).is_some());
        assert!(s.by_uid("nope", t0).is_none());
        assert!(s.by_container_id(&hex_id(7), t0).is_none());

        // The container restarts with a new ID: both the new and the old ID resolve.
        s.handle(watcher::Event::Apply(simple_pod("u1", 2)), t0);
        assert_eq!(
            s.by_container_id(&hex_id(2), t0).unwrap().1.id,
            Some(hex_id(2))
        );
        assert_eq!(
            s.by_container_id(&hex_id(1), t0).unwrap().1.id,
            Some(hex_id(2))
        );
        // Bounded number of retired IDs.
        for seed in 3..60 {
            s.handle(watcher::Event::Apply(simple_pod("u1", seed)), t0);
        }
        assert!(s.live["u1"].ids().count() <= 1 + MAX_RETIRED_IDS_PER_POD);
        assert_eq!(s.live_ids.len(), s.live["u1"].ids().count());
        assert!(s.by_container_id(&hex_id(58), t0).is_some());
        assert_eq!(s.len(t0), (1, 0));
    }

    #[test]
    fn uid_with_underscores() {
        let t0 = Instant::now();
        let mut s = state(600, 100);
        s.handle(watcher::Event::Apply(simple_pod("9f1c-44aa-b2", 40)), t0);
        assert_eq!(s.by_uid("9f1c_44aa_b2", t0).unwrap().uid, "9f1c-44aa-b2");
        s.handle(watcher::Event::Delete(simple_pod("9f1c-44aa-b2", 40)), t0);
        assert!(s.by_uid("9f1c_44aa_b2", t0).unwrap().deleted);
        assert!(s.by_uid("9f1c_44aa_b3", t0).is_none());
    }

    #[test]
    fn tombstone_ttl() {
        let t0 = Instant::now();
        let mut s = state(600, 100);
        s.handle(watcher::Event::Apply(simple_pod("u1", 1)), t0);
        s.handle(watcher::Event::Apply(simple_pod("u2", 2)), t0);
        let t1 = t0 + Duration::from_secs(10);
        s.handle(watcher::Event::Delete(simple_pod("u1", 1)), t1);
        assert_eq!(s.len(t1), (1, 1));
        let p = s.by_uid("u1", t1).unwrap();
        assert!(p.deleted);
        let (p, c) = s.by_container_id(&hex_id(1), t1).unwrap();
        assert!(p.deleted);
        assert_eq!(c.name, "app");
        // Still there just before the TTL, gone at the TTL (even before pruning).
        let almost = t1 + Duration::from_secs(599);
        assert!(s.by_uid("u1", almost).is_some());
        let expired = t1 + Duration::from_secs(600);
        assert!(s.by_uid("u1", expired).is_none());
        assert!(s.by_container_id(&hex_id(1), expired).is_none());
        assert_eq!(s.len(expired), (1, 0));
        assert_eq!(s.tombstones.len(), 1, "lazy: not pruned yet");
        s.prune(expired);
        assert!(s.tombstones.is_empty() && s.tomb_ids.is_empty() && s.tomb_order.is_empty());
        // The live pod is untouched.
        assert!(s.by_container_id(&hex_id(2), expired).is_some());
    }

    #[test]
    fn tombstone_cap_evicts_oldest() {
        let t0 = Instant::now();
        let mut s = state(600, 3);
        for i in 0..5u8 {
            let uid = format!("u{i}");
            s.handle(watcher::Event::Apply(simple_pod(&uid, i)), t0);
            s.handle(
                watcher::Event::Delete(simple_pod(&uid, i)),
                t0 + Duration::from_secs(u64::from(i)),
            );
        }
        let now = t0 + Duration::from_secs(5);
        assert_eq!(s.len(now), (0, 3));
        for i in 0..5u8 {
            let present = s.by_uid(&format!("u{i}"), now).is_some();
            assert_eq!(present, i >= 2, "u{i}");
            assert_eq!(
                s.by_container_id(&hex_id(i), now).is_some(),
                i >= 2,
                "cid of u{i}"
            );
        }
        assert_eq!(s.tomb_ids.len(), 3);
        // No tombstones at all when the cap is 0.
        let mut none = state(600, 0);
        none.handle(watcher::Event::Apply(simple_pod("a", 1)), t0);
        none.handle(watcher::Event::Delete(simple_pod("a", 1)), t0);
        assert_eq!(none.len(t0), (0, 0));
        assert!(none.by_container_id(&hex_id(1), t0).is_none());
    }

    #[test]
    fn relist_turns_vanished_pods_into_tombstones() {
        let t0 = Instant::now();
        let mut s = state(600, 100);
        assert!(!s.handle(watcher::Event::Init, t0));
        s.handle(watcher::Event::InitApply(simple_pod("u1", 1)), t0);
        s.handle(watcher::Event::InitApply(simple_pod("u2", 2)), t0);
        // Nothing visible until InitDone.
        assert!(s.by_uid("u1", t0).is_none());
        assert!(s.handle(watcher::Event::InitDone, t0));
        assert_eq!(s.len(t0), (2, 0));

        // Relist after an outage: u1 vanished, u3 appeared, u2 changed container.
        let t1 = t0 + Duration::from_secs(30);
        s.handle(watcher::Event::Init, t1);
        s.handle(watcher::Event::InitApply(simple_pod("u2", 22)), t1);
        s.handle(watcher::Event::InitApply(simple_pod("u3", 3)), t1);
        // During the relist the old state is still served.
        assert!(!s.by_uid("u1", t1).unwrap().deleted);
        assert!(s.by_uid("u3", t1).is_none());
        assert!(s.handle(watcher::Event::InitDone, t1));
        assert_eq!(s.len(t1), (2, 1));
        assert!(s.by_uid("u1", t1).unwrap().deleted);
        assert!(s.by_container_id(&hex_id(1), t1).unwrap().0.deleted);
        assert_eq!(s.by_container_id(&hex_id(22), t1).unwrap().0.uid, "u2");
        assert_eq!(s.by_container_id(&hex_id(2), t1).unwrap().0.uid, "u2");
        assert!(!s.by_uid("u3", t1).unwrap().deleted);
        // A tombstoned pod that shows up live again is live.
        s.handle(watcher::Event::Apply(simple_pod("u1", 1)), t1);
        assert!(!s.by_uid("u1", t1).unwrap().deleted);
        assert_eq!(s.len(t1), (3, 0));
        assert!(s.tomb_ids.is_empty());
        // A delete event for an unknown pod still leaves a tombstone.
        s.handle(watcher::Event::Delete(simple_pod("u9", 9)), t1);
        assert!(s.by_container_id(&hex_id(9), t1).unwrap().0.deleted);
    }

    #[test]
    fn double_delete_keeps_first_deletion_time() {
        let t0 = Instant::now();
        let mut s = state(100, 10);
        s.handle(watcher::Event::Apply(simple_pod("u1", 1)), t0);
        s.handle(watcher::Event::Delete(simple_pod("u1", 1)), t0);
        s.handle(
            watcher::Event::Delete(simple_pod("u1", 1)),
            t0 + Duration::from_secs(50),
        );
        assert!(s.by_uid("u1", t0 + Duration::from_secs(99)).is_some());
        assert!(s.by_uid("u1", t0 + Duration::from_secs(100)).is_none());
        s.prune(t0 + Duration::from_secs(100));
        assert!(s.tombstones.is_empty());
    }
}

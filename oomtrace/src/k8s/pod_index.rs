//! Node-local pod index: attributes an OOM kill (pod UID / container ID taken from the
//! victim's cgroup path) to a pod and container, even shortly after the pod is gone.
//!
//! A [`kube::runtime::watcher`] lists and watches the Pods scheduled on this node
//! (`fieldSelector=spec.nodeName=<node>`, all namespaces), decoded as compact
//! [`IndexedPod`] records, and reflects them into kube's [`reflector::Store`], whose
//! [`wait_until_ready`](Store::wait_until_ready) says when the first list is in. The watcher
//! uses kube's default `ListWatch` strategy (paginated LIST, then WATCH from the list's
//! `resourceVersion` with bookmarks) and [`default_backoff`](WatchStreamExt::default_backoff),
//! so it survives API server outages; a `410 Gone` on a stale `resourceVersion` makes it
//! relist. The store keeps a relist's objects aside until it completes, then swaps them in.
//!
//! The store answers by namespace and name only; [`PodHistory`] adds what attribution needs
//! on top of it (by UID, by current or former container ID, deleted pods), on the store's
//! own records.

use std::{
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use kube::{
    api::Api,
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt,
    },
    Client,
};

use super::pod_history::PodHistory;
use super::pod_record::{ContainerInfo, IndexedPod, PodInfo};

/// Default time a deleted pod stays resolvable.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(10 * 60);
/// Default maximum number of tombstones kept; the oldest deletion is evicted first.
pub const DEFAULT_MAX_TOMBSTONES: usize = 10_000;

/// Options of [`PodIndex::spawn_with`].
#[derive(Debug, Clone)]
pub struct PodIndexOptions {
    /// How long a deleted pod stays resolvable.
    pub tombstone_ttl: Duration,
    /// Maximum number of tombstones; the oldest deletion is evicted first.
    pub max_tombstones: usize,
}

impl Default for PodIndexOptions {
    fn default() -> Self {
        Self {
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            max_tombstones: DEFAULT_MAX_TOMBSTONES,
        }
    }
}

/// The reflector's store and the history kept beside it, updated together by one writer.
struct Shared {
    store: Store<IndexedPod>,
    history: RwLock<PodHistory>,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, PodHistory> {
        self.history.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, PodHistory> {
        self.history.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one watcher event to the store, then to the history, under the history's
    /// lock: the store signals readiness as it applies the first `InitDone`, and a reader
    /// woken by it must find the history up to date, not one step behind.
    fn apply(
        &self,
        writer: &mut reflector::store::Writer<IndexedPod>,
        event: &watcher::Event<IndexedPod>,
        now: Instant,
    ) {
        let mut history = self.write();
        writer.apply_watcher_event(event);
        history.follow(&self.store, event, now);
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("pods", &self.store.len())
            .finish_non_exhaustive()
    }
}

/// Aborts the watcher task when the last [`PodIndex`] clone is dropped.
#[derive(Debug)]
struct TaskGuard(Option<tokio::task::JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// The node-local pod index. Cheap to clone (shared state); the watcher task stops when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct PodIndex {
    shared: Arc<Shared>,
    _task: Arc<TaskGuard>,
}

impl PodIndex {
    /// Starts watching the pods of `node` on the current tokio runtime (panics outside one).
    pub fn spawn(client: Client, node: String, tombstone_ttl: Duration) -> PodIndex {
        Self::spawn_with(
            client,
            node,
            PodIndexOptions {
                tombstone_ttl,
                ..PodIndexOptions::default()
            },
        )
    }

    /// [`spawn`](Self::spawn) with all options.
    pub fn spawn_with(client: Client, node: String, options: PodIndexOptions) -> PodIndex {
        let (store, writer) = reflector::store();
        let shared = Self::new_shared(store, &options);
        let api: Api<IndexedPod> = Api::all(client);
        let prune_every =
            (options.tombstone_ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let task = tokio::spawn(run_watcher(shared.clone(), api, writer, node, prune_every));
        PodIndex {
            shared,
            _task: Arc::new(TaskGuard(Some(task))),
        }
    }

    /// An index without a watcher, fed through the returned writer and
    /// [`apply_event`](Self::apply_event) (tests, replay tools).
    pub fn unwatched(options: PodIndexOptions) -> (PodIndex, reflector::store::Writer<IndexedPod>) {
        let (store, writer) = reflector::store();
        let index = PodIndex {
            shared: Self::new_shared(store, &options),
            _task: Arc::new(TaskGuard(None)),
        };
        (index, writer)
    }

    fn new_shared(store: Store<IndexedPod>, options: &PodIndexOptions) -> Arc<Shared> {
        Arc::new(Shared {
            store,
            history: RwLock::new(PodHistory::new(
                options.tombstone_ttl,
                options.max_tombstones,
            )),
        })
    }

    /// Applies one watcher event through `writer` (this index's), as the watcher task does.
    pub fn apply_event(
        &self,
        writer: &mut reflector::store::Writer<IndexedPod>,
        event: watcher::Event<IndexedPod>,
    ) {
        self.shared.apply(writer, &event, Instant::now());
    }

    /// The pod with this UID: live, or deleted less than the tombstone TTL ago. The UID may be
    /// spelled with `_` instead of `-` (as in systemd cgroup slice names).
    pub fn by_uid(&self, uid: &str) -> Option<PodInfo> {
        self.shared.read().by_uid(uid, Instant::now())
    }

    /// The pod and container with this container ID (bare or with a `<runtime>://` prefix).
    pub fn by_container_id(&self, id: &str) -> Option<(PodInfo, ContainerInfo)> {
        self.shared.read().by_container_id(id, Instant::now())
    }

    /// True once the initial list completed (stays true across later relists and outages).
    pub fn is_synced(&self) -> bool {
        self.shared
            .store
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok())
    }

    /// Waits until [`is_synced`](Self::is_synced), at most `timeout`. Returns whether it is.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.shared.store.wait_until_ready())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// (live pods, unexpired tombstones).
    pub fn len(&self) -> (usize, usize) {
        self.shared.read().len(Instant::now())
    }

    /// No live pod and no tombstone.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

async fn run_watcher(
    shared: Arc<Shared>,
    api: Api<IndexedPod>,
    mut writer: reflector::store::Writer<IndexedPod>,
    node: String,
    prune_every: Duration,
) {
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    // Reflected by hand rather than with `.reflect(writer)`: see `Shared::apply`.
    let mut events = watcher(api, config)
        .default_backoff()
        .modify(IndexedPod::strip)
        .boxed();
    let mut prune = tokio::time::interval(prune_every);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Start of the current outage; errors are logged at warn once per outage.
    let mut outage: Option<Instant> = None;
    let mut synced = false;
    tracing::debug!(%node, "pod index: starting pod watcher");
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if let Some(since) = outage.take() {
                        tracing::info!(
                            down_for = ?since.elapsed(),
                            "pod index: Kubernetes API reachable again, pod watch resumed"
                        );
                    }
                    shared.apply(&mut writer, &event, Instant::now());
                    if matches!(event, watcher::Event::InitDone) {
                        let (live, tombstones) = shared.read().len(Instant::now());
                        if synced {
                            tracing::debug!(%node, live, tombstones, "pod index: relisted pods");
                        } else {
                            synced = true;
                            tracing::info!(%node, live, tombstones, "pod index: initial pod list synced");
                        }
                        // The list pages are decoded and gone: give their pages back.
                        crate::heap::release_freed();
                    }
                }
                Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                    // Our resourceVersion is too old: the watcher relists on its own.
                    tracing::debug!(status = %status.message, "pod index: watch expired (410 Gone), relisting");
                }
                Some(Err(error)) => {
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        tracing::warn!(
                            %error,
                            "pod index: pod watch failed, retrying with backoff (pods deleted meanwhile stay resolvable; further errors of this outage are logged at debug)"
                        );
                    } else {
                        tracing::debug!(%error, "pod index: pod watch still failing");
                    }
                }
                None => {
                    // kube's watcher never ends; be defensive anyway.
                    tracing::warn!("pod index: pod watcher ended");
                    break;
                }
            },
            _ = prune.tick() => shared.write().prune(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::owner::Owner;
    use crate::k8s::pod_record::fixtures::*;

    #[tokio::test]
    async fn unwatched_index_api() {
        let (index, mut writer) = PodIndex::unwatched(PodIndexOptions {
            tombstone_ttl: Duration::from_millis(200),
            max_tombstones: 10,
        });
        assert!(!index.is_synced());
        assert!(!index.wait_synced(Duration::from_millis(10)).await);
        index.apply_event(&mut writer, watcher::Event::Init);
        index.apply_event(
            &mut writer,
            watcher::Event::InitApply(indexed(&with_owner(
                simple_pod("u1", 1),
                owner_ref("ReplicaSet", "apps/v1", "web-abc12", Some(true)),
                Some("abc12"),
            ))),
        );
        index.apply_event(&mut writer, watcher::Event::InitDone);
        assert!(index.wait_synced(Duration::from_secs(1)).await);
        assert!(index.is_synced());
        let clone = index.clone();
        let (p, _) = clone.by_container_id(&hex_id(1)).unwrap();
        assert_eq!(
            p.owner,
            Some(Owner {
                kind: "Deployment".into(),
                name: "web".into()
            })
        );
        index.apply_event(
            &mut writer,
            watcher::Event::Delete(indexed(&simple_pod("u1", 1))),
        );
        assert_eq!(index.len(), (0, 1));
        assert!(index.by_uid("u1").unwrap().deleted);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(index.by_uid("u1").is_none());
        assert!(index.is_empty());
    }
}

//! The pod index (oomtrace::k8s::pod_index) against the test API server, through the real kube
//! client and a kubeconfig file. No process environment is mutated.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use oomtrace::k8s::{
    client::client_from_kubeconfig, owner::Owner, pod_index::PodIndex, pod_record::ContainerKind,
};
use oomtrace_tests::apiserver::{container_id, containerd_id, pod, ApiServer, Mode, PodBuilder};

const NODE: &str = "node-1";
const SYNC: Duration = Duration::from_secs(10);
/// Bound for anything that depends on the watcher's backoff (min 0.8 s, doubling, jitter).
const RECOVER: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

fn temp_kubeconfig(server: &ApiServer) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "oomtrace-pod-index-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    path
}

fn server() -> ApiServer {
    init_tracing();
    let server = ApiServer::start();
    server.set_bookmark_interval(Duration::from_millis(200));
    server
}

/// Starts an index watching `server` (through a kubeconfig file).
async fn spawn_index(server: &ApiServer, ttl: Duration) -> (PodIndex, PathBuf) {
    let kubeconfig = temp_kubeconfig(server);
    let client = client_from_kubeconfig(&kubeconfig)
        .await
        .expect("client from kubeconfig");
    let index = PodIndex::spawn(client, NODE.to_string(), ttl);
    (index, kubeconfig)
}

/// Polls `cond` every 20 ms until it holds, at most `timeout`.
async fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn simple(name: &str, uid: &str, node: &str) -> k8s_openapi::api::core::v1::Pod {
    pod(
        "default",
        name,
        uid,
        node,
        "Burstable",
        &[("app", &containerd_id(uid), Some("256Mi"), Some("128Mi"))],
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_and_resolves_by_uid_and_container_id() {
    let server = server();
    let web = pod(
        "shop",
        "web-7d4b9c8f6d-x2x9p",
        "uid-web",
        NODE,
        "Burstable",
        &[
            (
                "nginx",
                &containerd_id("web-nginx"),
                Some("512Mi"),
                Some("256Mi"),
            ),
            (
                "sidecar",
                &format!("cri-o://{}", container_id("web-sidecar")),
                Some("0.5Gi"),
                None,
            ),
            ("not-started", "", None, None),
        ],
        Some(("web", "7d4b9c8f6d")),
    );
    server.add_pod(&web);
    let job = PodBuilder::new("batch", "migrate-abcde")
        .uid("uid-job")
        .node(NODE)
        .qos("Guaranteed")
        .init_container(
            "wait-db",
            &format!("docker://{}", container_id("job-init")),
            Some("64Mi"),
            Some("64Mi"),
        )
        .container(
            "migrate",
            &containerd_id("job-main"),
            Some("1G"),
            Some("1G"),
        )
        .last_terminated("migrate", &containerd_id("job-main-previous"))
        .ephemeral_container("debugger", &containerd_id("job-debug"))
        .owner("batch/v1", "Job", "migrate")
        .build();
    server.add_pod(&job);
    server.add_pod(simple("elsewhere", "uid-elsewhere", "node-2"));

    let (index, kubeconfig) = spawn_index(&server, Duration::from_secs(600)).await;
    assert!(index.wait_synced(SYNC).await, "initial sync");
    assert!(index.is_synced());
    assert_eq!(index.len(), (2, 0));

    // By UID, with owner resolution and memory quantities.
    let p = index.by_uid("uid-web").expect("web pod");
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str(), p.uid.as_str()),
        ("shop", "web-7d4b9c8f6d-x2x9p", "uid-web")
    );
    assert_eq!(p.node.as_deref(), Some(NODE));
    assert_eq!(p.qos_class.as_deref(), Some("Burstable"));
    assert_eq!(
        p.owner,
        Some(Owner {
            kind: "Deployment".into(),
            name: "web".into()
        })
    );
    assert!(!p.deleted);
    assert_eq!(p.containers.len(), 3);
    assert_eq!(p.containers[0].limits_memory_bytes, Some(512 << 20));
    assert_eq!(p.containers[0].requests_memory_bytes, Some(256 << 20));
    assert_eq!(p.containers[1].limits_memory_bytes, Some(512 << 20));
    assert_eq!(p.containers[2].id, None);

    // By container ID: bare, prefixed, another runtime's prefix.
    let nginx = container_id("web-nginx");
    let (p, c) = index.by_container_id(&nginx).expect("nginx");
    assert_eq!(
        (p.uid.as_str(), c.name.as_str(), c.kind),
        ("uid-web", "nginx", ContainerKind::Regular)
    );
    assert_eq!(c.id.as_deref(), Some(nginx.as_str()));
    assert_eq!(
        index
            .by_container_id(&containerd_id("web-nginx"))
            .unwrap()
            .1
            .name,
        "nginx"
    );
    assert_eq!(
        index
            .by_container_id(&container_id("web-sidecar"))
            .unwrap()
            .1
            .name,
        "sidecar"
    );

    // Init, ephemeral, and the previous instance of a restarted container.
    let (p, c) = index
        .by_container_id(&container_id("job-init"))
        .expect("init container");
    assert_eq!(
        (p.uid.as_str(), c.name.as_str(), c.kind),
        ("uid-job", "wait-db", ContainerKind::Init)
    );
    assert_eq!(c.limits_memory_bytes, Some(64 << 20));
    assert_eq!(
        p.owner,
        Some(Owner {
            kind: "Job".into(),
            name: "migrate".into()
        })
    );
    assert_eq!(p.qos_class.as_deref(), Some("Guaranteed"));
    let (_, c) = index
        .by_container_id(&container_id("job-debug"))
        .expect("ephemeral container");
    assert_eq!(
        (c.name.as_str(), c.kind),
        ("debugger", ContainerKind::Ephemeral)
    );
    let (_, c) = index
        .by_container_id(&container_id("job-main-previous"))
        .expect("previous instance");
    assert_eq!(c.name, "migrate");
    assert_eq!(c.id, Some(container_id("job-main")));
    assert_eq!(c.limits_memory_bytes, Some(1_000_000_000));

    // Pods of other nodes are not indexed (field selector).
    assert!(index.by_uid("uid-elsewhere").is_none());
    assert!(index
        .by_container_id(&container_id("uid-elsewhere"))
        .is_none());
    assert!(index.by_container_id("containerd://0000").is_none());

    // Changes after the sync arrive through the watch.
    server.add_pod(simple("late", "uid-late", NODE));
    eventually(SYNC, "late pod added", || {
        index.by_uid("uid-late").is_some()
    })
    .await;
    let restarted = pod(
        "shop",
        "web-7d4b9c8f6d-x2x9p",
        "uid-web",
        NODE,
        "Burstable",
        &[(
            "nginx",
            &containerd_id("web-nginx-2"),
            Some("512Mi"),
            Some("256Mi"),
        )],
        Some(("web", "7d4b9c8f6d")),
    );
    server.update_pod(&restarted).expect("update");
    eventually(SYNC, "new container ID", || {
        index
            .by_container_id(&container_id("web-nginx-2"))
            .is_some()
    })
    .await;
    // The former ID still resolves to the same container.
    assert_eq!(
        index.by_container_id(&nginx).unwrap().1.id,
        Some(container_id("web-nginx-2"))
    );
    assert_eq!(index.len(), (3, 0));
    // A pod recreated under the same name (as a StatefulSet does): the old one is a tombstone.
    server.add_pod(simple("late", "uid-late-2", NODE));
    eventually(SYNC, "recreated pod", || {
        index.by_uid("uid-late-2").is_some() && index.by_uid("uid-late").is_some_and(|p| p.deleted)
    })
    .await;
    assert_eq!(index.len(), (3, 1));

    // What the real client asked for: a LIST by node, then a WATCH from its resourceVersion
    // with bookmarks.
    let reqs = server.requests();
    let list = reqs.iter().find(|r| r.is_pod_list()).expect("a pod list");
    assert_eq!(list.path, "/api/v1/pods");
    assert_eq!(list.param("fieldSelector"), Some("spec.nodeName=node-1"));
    let watch = reqs.iter().find(|r| r.is_pod_watch()).expect("a pod watch");
    assert_eq!(watch.param("fieldSelector"), Some("spec.nodeName=node-1"));
    assert_eq!(watch.param("allowWatchBookmarks"), Some("true"));
    assert!(watch
        .param("resourceVersion")
        .is_some_and(|rv| rv.parse::<u64>().is_ok()));
    assert_eq!(watch.param("sendInitialEvents"), None);

    drop(index);
    let _ = std::fs::remove_dir_all(kubeconfig.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pod_is_a_tombstone_until_the_ttl() {
    let ttl = Duration::from_millis(1500);
    let server = server();
    server.add_pod(simple("doomed", "uid-doomed", NODE));
    server.add_pod(simple("stays", "uid-stays", NODE));
    let (index, kubeconfig) = spawn_index(&server, ttl).await;
    assert!(index.wait_synced(SYNC).await);
    assert_eq!(index.len(), (2, 0));

    server.delete_pod("default", "doomed").expect("delete");
    eventually(SYNC, "tombstone", || {
        index.by_uid("uid-doomed").is_some_and(|p| p.deleted)
    })
    .await;
    let deleted_seen = Instant::now();
    let (p, c) = index
        .by_container_id(&containerd_id("uid-doomed"))
        .expect("tombstone by container ID");
    assert!(p.deleted);
    assert_eq!((p.name.as_str(), c.name.as_str()), ("doomed", "app"));
    assert_eq!(c.limits_memory_bytes, Some(256 << 20));
    assert_eq!(index.len(), (1, 1));

    eventually(ttl + Duration::from_secs(3), "tombstone expiry", || {
        index.by_uid("uid-doomed").is_none()
    })
    .await;
    assert!(
        deleted_seen.elapsed() >= ttl - Duration::from_millis(200),
        "expired too early"
    );
    assert!(index.by_container_id(&container_id("uid-doomed")).is_none());
    assert_eq!(index.len(), (1, 0));
    assert!(!index.by_uid("uid-stays").unwrap().deleted);

    drop(index);
    let _ = std::fs::remove_dir_all(kubeconfig.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resyncs_after_an_api_server_outage() {
    let server = server();
    server.add_pod(simple("a", "uid-a", NODE));
    server.add_pod(simple("b", "uid-b", NODE));
    let (index, kubeconfig) = spawn_index(&server, Duration::from_secs(600)).await;
    assert!(index.wait_synced(SYNC).await);
    assert!(server.wait_for_watches(1, SYNC).await, "watch established");

    server.stop();
    assert_eq!(server.active_watches(), 0);
    // While the API server is down: one pod goes away, one comes.
    server.delete_pod("default", "a").unwrap();
    server.add_pod(simple("c", "uid-c", NODE));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The index keeps serving its last state meanwhile.
    assert!(!index.by_uid("uid-a").unwrap().deleted);
    assert!(index.is_synced());
    server.restart();

    eventually(RECOVER, "resync after restart", || {
        index.by_uid("uid-a").is_some_and(|p| p.deleted) && index.by_uid("uid-c").is_some()
    })
    .await;
    assert!(
        index
            .by_container_id(&container_id("uid-a"))
            .unwrap()
            .0
            .deleted
    );
    assert!(
        !index
            .by_container_id(&container_id("uid-c"))
            .unwrap()
            .0
            .deleted
    );
    assert_eq!(index.len(), (2, 1));
    // The history survived the restart, so the watcher resumed its watch (no relist needed).
    assert_eq!(
        server.requests().iter().filter(|r| r.is_pod_list()).count(),
        1
    );

    drop(index);
    let _ = std::fs::remove_dir_all(kubeconfig.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_410_gone() {
    let server = server();
    server.add_pod(simple("a", "uid-a", NODE));
    server.add_pod(simple("b", "uid-b", NODE));
    let (index, kubeconfig) = spawn_index(&server, Duration::from_secs(600)).await;
    assert!(index.wait_synced(SYNC).await);
    assert!(server.wait_for_watches(1, SYNC).await, "watch established");
    let lists_before = server.requests().iter().filter(|r| r.is_pod_list()).count();

    server.stop();
    server.delete_pod("default", "a").unwrap();
    server.add_pod(simple("c", "uid-c", NODE));
    let mut b = simple("b", "uid-b", NODE);
    b.status
        .as_mut()
        .unwrap()
        .container_statuses
        .as_mut()
        .unwrap()[0]
        .container_id = Some(containerd_id("b-2"));
    server.update_pod(&b).unwrap();
    // The changes the client missed are gone: its resourceVersion is now too old.
    server.compact_history();
    server.restart();

    eventually(RECOVER, "relist after 410", || {
        index.by_uid("uid-a").is_some_and(|p| p.deleted)
            && index.by_uid("uid-c").is_some()
            && index.by_container_id(&container_id("b-2")).is_some()
    })
    .await;
    assert_eq!(index.len(), (2, 1));
    // Both IDs of b resolve, to b.
    assert_eq!(
        index.by_container_id(&container_id("uid-b")).unwrap().0.uid,
        "uid-b"
    );
    let reqs = server.requests();
    assert!(
        reqs.iter().filter(|r| r.is_pod_list()).count() > lists_before,
        "the watcher relisted"
    );

    // And it keeps watching after the relist.
    server.add_pod(simple("d", "uid-d", NODE));
    eventually(SYNC, "pod added after relist", || {
        index.by_uid("uid-d").is_some()
    })
    .await;

    drop(index);
    let _ = std::fs::remove_dir_all(kubeconfig.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_garbage_server() {
    let server = server();
    server.add_pod(simple("a", "uid-a", NODE));
    let (index, kubeconfig) = spawn_index(&server, Duration::from_secs(600)).await;
    assert!(index.wait_synced(SYNC).await);
    assert!(server.wait_for_watches(1, SYNC).await);

    // The open watch gets a garbage line and is closed, every new request gets garbage.
    // The index keeps its last state.
    server.set_mode(Mode::Garbage);
    let since = server.requests().len();
    eventually(RECOVER, "the client retried against garbage", || {
        server.requests()[since..].iter().any(|r| r.is_pods())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!index.by_uid("uid-a").unwrap().deleted);
    assert_eq!(index.len(), (1, 0));

    // Back to normal: changes are seen again.
    server.set_mode(Mode::Normal);
    server.delete_pod("default", "a").unwrap();
    server.add_pod(simple("b", "uid-b", NODE));
    eventually(RECOVER, "changes after recovery", || {
        index.by_uid("uid-a").is_some_and(|p| p.deleted) && index.by_uid("uid-b").is_some()
    })
    .await;
    assert_eq!(index.len(), (1, 1));

    drop(index);
    let _ = std::fs::remove_dir_all(kubeconfig.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_errors_and_a_slow_server() {
    let server = server();
    server.add_pod(simple("a", "uid-a", NODE));
    let (index, kubeconfig) = spawn_index(&server, Duration::from_secs(600)).await;
    assert!(index.wait_synced(SYNC).await);
    assert!(server.wait_for_watches(1, SYNC).await);

    // HTTP 500 on every request; the open watch gets an ERROR event (500) and is closed.
    server.set_mode(Mode::Error(500));
    let since = server.requests().len();
    eventually(RECOVER, "the client retried against errors", || {
        server.requests()[since..].iter().any(|r| r.is_pods())
    })
    .await;
    assert!(!index.by_uid("uid-a").unwrap().deleted);
    assert_eq!(index.len(), (1, 0));

    // Slow but working: changes still arrive.
    server.set_mode(Mode::Slow(Duration::from_millis(300)));
    server.add_pod(simple("b", "uid-b", NODE));
    eventually(RECOVER, "pod added through a slow server", || {
        index.by_uid("uid-b").is_some()
    })
    .await;
    server.delete_pod("default", "a").unwrap();
    eventually(RECOVER, "deletion through a slow server", || {
        index.by_uid("uid-a").is_some_and(|p| p.deleted)
    })
    .await;
    assert_eq!(index.len(), (1, 1));

    drop(index);
    let _ = std::fs::remove_dir_all(kubeconfig.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_server_at_all_means_not_synced() {
    init_tracing();
    let server = ApiServer::start();
    let kubeconfig = temp_kubeconfig(&server);
    server.stop();
    let client = client_from_kubeconfig(&kubeconfig).await.unwrap();
    let index = PodIndex::spawn(client, NODE.to_string(), Duration::from_secs(60));
    assert!(!index.wait_synced(Duration::from_millis(500)).await);
    assert!(index.by_uid("anything").is_none());
    assert_eq!(index.len(), (0, 0));
    // It syncs as soon as the server comes up.
    server.add_pod(simple("a", "uid-a", NODE));
    server.restart();
    assert!(index.wait_synced(RECOVER).await);
    assert!(index.by_uid("uid-a").is_some());
    drop(index);
    let _ = std::fs::remove_dir_all(kubeconfig.parent().unwrap());
}

/// The server side of the protocol, with kube's own client: streaming lists, events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_api_server_speaks_kube() {
    use futures::StreamExt;
    use k8s_openapi::api::{core::v1::Pod, events::v1::Event};
    use kube::{
        api::{Api, ListParams, PostParams},
        runtime::watcher,
    };

    init_tracing();
    let server = ApiServer::start();
    let kubeconfig = temp_kubeconfig(&server);
    let client = client_from_kubeconfig(&kubeconfig).await.unwrap();
    server.add_pod(simple("a", "uid-a", NODE));
    server.add_pod(
        PodBuilder::new("other", "b")
            .uid("uid-b")
            .node("node-2")
            .label("app", "x")
            .build(),
    );

    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    let list = pods
        .list(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let ns: Api<Pod> = Api::namespaced(client.clone(), "other");
    assert_eq!(
        ns.get("b").await.unwrap().metadata.uid.as_deref(),
        Some("uid-b")
    );
    assert!(ns.get("nope").await.is_err());

    // Streaming-list watcher (sendInitialEvents=true): initial events end with a bookmark.
    let cfg = watcher::Config::default()
        .fields("spec.nodeName=node-1")
        .streaming_lists();
    let mut stream = watcher(Api::<Pod>::all(client.clone()), cfg).boxed();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + SYNC;
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("streaming list")
            .unwrap()
            .unwrap();
        match ev {
            watcher::Event::InitApply(p) => seen.push(p.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, ["a"]);
    assert!(server
        .requests()
        .iter()
        .any(|r| r.param("sendInitialEvents") == Some("true")));

    // Events are accepted and recorded.
    let events: Api<Event> = Api::namespaced(client, "default");
    let mut ev = Event::default();
    ev.metadata.generate_name = Some("oom-".into());
    ev.reason = Some("OOMKilled".into());
    ev.note = Some("container app was OOM-killed".into());
    let created = events.create(&PostParams::default(), &ev).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("oom-"));
    assert!(created.metadata.resource_version.is_some());
    let recorded = server.events();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["reason"], "OOMKilled");
    assert_eq!(recorded[0]["metadata"]["namespace"], "default");
    let _ = std::fs::remove_dir_all(kubeconfig.parent().unwrap());
}

//! A running `oomtrace daemon`: its HTTP endpoints (`/metrics`, `/readyz`), and waiting for
//! what it does.
use crate::oomtrace_proc::Watch;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// `GET path` on the daemon: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The address the daemon says it serves on (`--listen 127.0.0.1:0` picks a free port).
pub fn listen_addr(w: &Watch) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(addr) = w
            .stderr_text()
            .lines()
            .find_map(|l| l.split("/readyz on ").nth(1).map(|a| a.trim().to_string()))
        {
            return addr;
        }
        assert!(Instant::now() < deadline, "no listen address in:\n{}", w.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` for up to 20 s.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `oomtrace daemon` on node `node` with a kubeconfig, once ready: the process and its
/// listen address.
pub fn start_ready(kubeconfig: &Path, node: &str) -> (Watch, String) {
    let w = Watch::start_cmd(
        &["daemon", "-v", "--listen", "127.0.0.1:0", "--kubeconfig", kubeconfig.to_str().unwrap()],
        &[],
        &[("NODE_NAME", node)],
    );
    let addr = listen_addr(&w);
    wait_for("/readyz", || http_get(&addr, "/readyz").0 == 200);
    (w, addr)
}

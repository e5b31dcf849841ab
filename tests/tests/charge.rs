//! The allocation site (`oom.charge`): real kills triggered from each kernel path the kernel
//! here produces, read back from the charging task's captured stacks.
//!
//! Not produced here, so not tested: a page-cache *write* OOM (dirty pages are written back
//! and reclaimed rather than OOM-killed for), a THP fault OOM (the fault falls back to small
//! pages when the huge charge fails) and a slab OOM from dentries (reclaimable). Slab is
//! produced with kernel objects nothing reclaims: VMAs.
use oomtrace_tests::cgroup::{hog_binary, Hog, HogKind, TestCgroup};
use oomtrace_tests::oomtrace_proc::{in_cgroup, kill_in, Watch};
use oomtrace_tests::require_root_and_btf;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn charge(e: &Value) -> &Value {
    let c = &e["oom"]["charge"];
    assert!(c.is_object(), "no oom.charge: {e:#}");
    c
}

fn stack(e: &Value) -> Vec<&str> {
    charge(e)["stack"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect()
}

/// One page in 512 a fault maps is a page table's, charged as kernel memory before the data
/// page. When that one hits the limit it is named `slab` (kernel memory), or for the fault when
/// the fault's own function is on the stack (`do_anonymous_page`, which 5.10 inlines). 5.10's
/// `__do_fault` allocates it with `pte_alloc_one` before calling the file's fault.
fn charged_a_page_table(stack: &[&str]) -> bool {
    stack.iter().any(|f| matches!(*f, "__pte_alloc" | "pte_alloc_one"))
}

/// Kills the only process of a fresh cgroup of `limit_mib`, grown the `kind` way; its event.
/// Its code is locked in memory: reclaim could otherwise drop it, and a fault re-reading it
/// (a page-cache charge) be the one that invokes the OOM killer.
fn kill_by(w: &Watch, name: &str, kind: HogKind, limit_mib: u64) -> Value {
    let cg = TestCgroup::new(name).unwrap();
    cg.set_limit(limit_mib * MIB).unwrap();
    kill_in(&cg, w, Hog { kind, lock_code: true, ..Hog::anon(256) })
}

#[test]
fn each_kernel_path_is_named_with_its_stack() {
    require_root_and_btf();
    let w = Watch::start(&[]);
    // (hog kind, cgroup limit in MiB, charge kind, functions one of which the stack must
    // hold, the verdict's clause)
    let cases: [(HogKind, u64, &str, &[&str], &str); 5] = [
        // A fault in the shared mapping, or the tmpfs inode that mmap makes for it.
        (HogKind::Shmem, 32, "shmem", &["shmem_fault", "shmem_zero_setup"], "a tmpfs/shared-memory page of oomtrace-hog triggered it"),
        (HogKind::TmpfsWrite, 32, "shmem", &["shmem_write_begin"], "a tmpfs/shared-memory page of oomtrace-hog triggered it"),
        // Filling a pipe, making one, or growing it to 1 MiB (F_SETPIPE_SZ allocates its ring).
        (HogKind::Pipe, 32, "pipe", &["pipe_write", "pipe_resize_ring", "alloc_pipe_info", "create_pipe_files"], "pipe buffers of oomtrace-hog triggered it: pipe buffers count toward the limit"),
        (HogKind::Socket, 32, "socket", &["unix_stream_sendmsg", "__sys_socketpair"], "socket buffers of oomtrace-hog triggered it"),
        // VMAs alone: vm.max_map_count (65 530) of them take 12 MiB or more of kernel memory.
        (HogKind::Vmas, 8, "slab", &["vm_area_alloc", "vm_area_dup", "mmap_region"], "a kernel allocation (slab) for oomtrace-hog triggered it: kernel memory counts toward the limit"),
    ];
    for (hog, limit_mib, kind, functions, clause) in cases {
        let e = kill_by(&w, &format!("oomtrace-charge-{hog:?}"), hog, limit_mib);
        let c = charge(&e);
        let s = stack(&e);
        if charged_a_page_table(&s) && c["kind"] == "slab" {
            let v = e["verdict"].as_str().unwrap();
            assert!(v.contains("a kernel allocation (slab) for oomtrace-hog"), "{hog:?}: {v}");
            continue;
        }
        assert_eq!(c["kind"], kind, "{hog:?}: {c:#}");
        // `pipe_write` is `anon_pipe_write` from 6.16 on.
        assert!(s.iter().any(|f| functions.iter().any(|g| f.ends_with(g))), "{hog:?}: none of {functions:?} in {s:?}");
        assert!(!s.iter().any(|f| f.contains("oom_kill") || f.starts_with("bpf_")), "the OOM killer's frames are cut: {s:?}");
        assert!(s.len() <= 12);
        let v = e["verdict"].as_str().unwrap();
        assert!(v.contains(clause), "{hog:?}: {v}");
        assert_eq!(e["trigger"]["tgid"], e["victim"]["tgid"], "the hog charged and was killed: {e:#}");
    }
}

/// A surviving trigger: the kill of a big resident answered a small process's page fault, whose
/// user stack is still there to be symbolized (the test binaries keep their symbols).
///
/// The grower runs from a copy of the hog that is replaced on disk once it has started (as an
/// upgrade does, or as a container's path names another file on the host): its stack is named
/// from the file it runs, never from the one at its path now.
#[test]
fn anonymous_fault_of_another_task_names_it_and_its_user_stack() {
    require_root_and_btf();
    let w = Watch::start(&[]);
    let cg = TestCgroup::new("oomtrace-charge-anon").unwrap();
    cg.set_limit(48 * MIB).unwrap();
    let mut resident = cg.spawn_hog(&Hog { hold_ms: 60_000, ..Hog::anon(36) }).unwrap();
    cg.wait_for_usage(36 * MIB);
    // Not on the VM runner's 9p share: 9p opens a file by its path, so a removed file is no
    // longer readable through the mapping (on disk file systems and tmpfs it is).
    let binary = Removed(std::env::temp_dir().join(format!("oomtrace-charge-grower-{}", std::process::id())));
    let binary = &binary.0;
    std::fs::copy(hog_binary(), binary).unwrap();
    // It holds what it grew until the test has read the kill, so its memory map outlives
    // the daemon's read however slow the machine.
    let mut grower = Hog { hold_ms: 120_000, lock_code: true, ..Hog::anon(20) }.command_at(binary);
    grower.env("OOMTRACE_HOG_COMM", "grower");
    let mut grower = cg.spawn(&mut grower).unwrap();
    let grower_pid = grower.id();
    // Mapped since the spawn returned (after the exec); now another program is at its path.
    std::fs::remove_file(binary).unwrap();
    std::fs::copy(std::env::current_exe().unwrap(), binary).unwrap();
    assert_eq!(resident.wait().unwrap().signal(), Some(libc::SIGKILL));
    let e = w.collect(1, Duration::from_secs(30), in_cgroup(cg.rel.clone())).pop().expect("the kill");
    // Whether the grower outlives a later OOM of its own (under emulation the resident's
    // memory can still be charged when it grows on) says nothing about this kill.
    assert_eq!(e["victim"]["pid"], resident.id(), "{e:#}");
    // If it did not, its memory map may be gone before the daemon read it: it is given a
    // few seconds to be seen dead, against the two minutes it holds when alive.
    let c = charge(&e).clone();
    let grower_died = c["user_stack"].is_null() && {
        let by = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = grower.try_wait().unwrap() {
                break st.signal() == Some(libc::SIGKILL);
            }
            if Instant::now() > by {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let _ = grower.kill();
    let _ = grower.wait();
    assert_eq!((&e["trigger"]["comm"], &e["trigger"]["tgid"]), (&"grower".into(), &grower_pid.into()), "{e:#}");
    let v = e["verdict"].as_str().unwrap();
    let s = stack(&e);
    if charged_a_page_table(&s) && c["kind"] == "slab" {
        assert!(v.contains("a kernel allocation (slab) for grower"), "{v}");
    } else {
        assert_eq!(c["kind"], "anon_fault", "{c:#}");
        // 5.10 inlines do_anonymous_page into the fault path.
        assert!(s.iter().any(|f| *f == "do_anonymous_page" || *f == "handle_mm_fault"), "{c:#}");
        assert!(v.contains(&format!("an anonymous-memory page fault by grower (pid {grower_pid}) triggered it")), "{v}");
    }
    if grower_died {
        // Unknown, and said why: never a stack of another process.
        eprintln!("the grower was OOM-killed itself before its user stack was read: {c:#}");
        let note = c["user_stack_note"].as_str().unwrap_or_default();
        assert!(note.contains("it may have exited") || note.contains("torn down"), "{c:#}");
        return;
    }
    let user = c["user_stack"].as_array().unwrap_or_else(|| panic!("no user stack (the grower was alive): {c:#}"));
    assert!(user[0].as_str().unwrap().contains("oomtrace_hog"), "the faulting instruction is in the hog's own code: {c:#}");
}

/// A file removed when the test ends, passed or failed.
struct Removed(std::path::PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Page cache that reclaim cannot take: a file mapped and mlocked by the hog. Needs a disk
/// file system (tmpfs pages are shmem, charged to whoever wrote them).
#[test]
fn page_cache_read_is_named() {
    require_root_and_btf();
    let dir = std::env::var_os("OOMTRACE_VM_RESULTS").map_or_else(std::env::temp_dir, Into::into);
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct.
    let fs_type = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(libc::statfs(path.as_ptr(), &mut st), 0);
        st.f_type
    };
    if fs_type == libc::TMPFS_MAGIC {
        eprintln!("SKIP: {} is tmpfs; a page-cache charge needs a file on a disk file system", dir.display());
        return;
    }
    let file = dir.join(format!("oomtrace-charge-file-{}", std::process::id()));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).unwrap();
        f.write_all(&vec![0x5au8; 64 << 20]).unwrap();
        f.sync_all().unwrap();
    }
    let w = Watch::start(&[]);
    let cg = TestCgroup::new("oomtrace-charge-file").unwrap();
    cg.set_limit(32 * MIB).unwrap();
    let mut hog = Hog { kind: HogKind::FileMlock, lock_code: true, ..Hog::anon(0) }.command();
    hog.env("OOMTRACE_HOG_FILE", &file);
    let status = cg.spawn(&mut hog).unwrap().wait().unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let e = w.collect(1, Duration::from_secs(30), in_cgroup(cg.rel.clone())).pop().expect("the kill");
    let c = charge(&e);
    assert_eq!(c["kind"], "page_cache", "{c:#}");
    assert_eq!(c["write"], false, "{c:#}");
    assert!(stack(&e).iter().any(|f| f.contains("filemap") || f.starts_with("page_cache_")), "{c:#}");
    let v = e["verdict"].as_str().unwrap();
    assert!(v.contains("a page-cache read by oomtrace-hog triggered it: the cgroup's page cache counts toward its limit"), "{v}");
}

#[test]
fn no_charge_stacks_leaves_charge_null() {
    require_root_and_btf();
    let w = Watch::start(&["--no-charge-stacks"]);
    let cg = TestCgroup::new("oomtrace-charge-off").unwrap();
    cg.set_limit(32 * MIB).unwrap();
    let e = kill_in(&cg, &w, Hog::anon(256));
    assert!(e["oom"]["charge"].is_null(), "{e:#}");
}

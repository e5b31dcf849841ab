#!/bin/sh
# Built-in VM smoke test (`cargo xtask vm-test --smoke`), run as root inside the guest by the
# guest runner, like a libtest executable: it prints libtest-style `test NAME ... ok|FAILED` lines
# and a closing `test result:` line, and exits 101 when a check failed. Its arguments (the
# runner's `--test-threads=1` and any extra args) are ignored.
# It checks what oomtrace's real integration tests rely on: pure cgroup v2 with the memory
# controller, a memcg OOM kill accounted in memory.events, the oom:mark_victim tracepoint,
# kernel BTF, and a working bpf() syscall + bpffs.
CG=/sys/fs/cgroup
passed=0 failed=0

check() { # check NAME COMMAND...: runs COMMAND, its output goes to stdout either way
    name=$1; shift
    out=$("$@" 2>&1); rc=$?
    [ -n "$out" ] && printf '%s\n' "$out" | sed "s/^/    [$name] /"
    if [ $rc -eq 0 ]; then echo "test smoke::$name ... ok"; passed=$((passed + 1))
    else echo "test smoke::$name ... FAILED (status $rc)"; failed=$((failed + 1)); fi
}

pure_cgroup_v2() {
    stat -f -c 'fs type of /sys/fs/cgroup: %T' $CG
    [ "$(stat -f -c %T $CG)" = cgroup2fs ] || return 1
    echo "controllers: $(cat $CG/cgroup.controllers)"
    echo "root subtree_control: $(cat $CG/cgroup.subtree_control)"
    grep -qw memory $CG/cgroup.subtree_control || return 1
    echo "runner cgroup: $(cat /proc/$PPID/cgroup)"
    echo "own oom_score_adj: $(cat /proc/self/oom_score_adj)"
    # cgroup_no_v1=all: no v1 hierarchy may be mounted
    ! grep -E '^[^ ]+ [^ ]+ cgroup ' /proc/mounts
}

memcg_oom_kill() {
    t=$CG/oomtrace-smoke
    rmdir $t 2>/dev/null; mkdir $t || return 1
    echo 64M > $t/memory.max || return 1
    echo 0 > $t/memory.swap.max 2>/dev/null
    # `tail /dev/zero` keeps reading a line that never ends: an unbounded memory hog.
    sh -c "echo \$\$ > $t/cgroup.procs && exec tail /dev/zero"
    rc=$?
    echo "hog exit status: $rc (137 = SIGKILL)"
    cat $t/memory.events
    kills=$(awk '$1 == "oom_kill" {print $2}' $t/memory.events)
    rmdir $t
    [ $rc -eq 137 ] && [ "${kills:-0}" -ge 1 ]
}

oom_tracepoint() {
    f=/sys/kernel/tracing/events/oom/mark_victim/format
    head -n 3 $f && grep -q 'field:.*pid' $f
}

kernel_btf() { ls -l /sys/kernel/btf/vmlinux && [ -s /sys/kernel/btf/vmlinux ]; }

bpf_syscall() {
    m=/sys/fs/bpf/oomtrace_smoke
    rm -f $m
    bpftool map create $m type array key 4 value 8 entries 1 name oomtrace_smoke || return 1
    bpftool map show pinned $m; rc=$?
    rm -f $m
    return $rc
}

kprobes_available() {
    # Informational for oomtrace's kprobe/fentry fallbacks; a failure means the kernel lacks them.
    [ -e /sys/kernel/tracing/kprobe_events ] && echo "kprobe_events present"
    grep -c . /sys/kernel/tracing/available_filter_functions | sed 's/^/traceable functions: /'
    grep -qw oom_kill_process /sys/kernel/tracing/available_filter_functions
}

host_fs_read_only() {
    # The host root is shared read-only (QEMU readonly=on): writes to host paths must fail
    # with EROFS. Only the results dir (vng's single --rwdir) may be written.
    for d in / "$SCRIPT_DIR"; do
        if touch "$d/.oomtrace-vm-write-probe" 2>/dev/null; then
            rm -f "$d/.oomtrace-vm-write-probe"; echo "$d is writable from the guest!"; return 1
        fi
        echo "$d: read-only"
    done
    r=$OOMTRACE_VM_RESULTS
    touch "$r/.probe" && rm "$r/.probe" && echo "results dir $r: writable"
}

tcg_cpu_workaround() {
    # vm-test boots QEMU TCG with -cpu max,-la57,-cx16: neither flag may show up.
    grep -m1 '^model name' /proc/cpuinfo
    ! grep -qwE 'cx16|la57' /proc/cpuinfo
}

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
echo "running 8 tests"
check pure_cgroup_v2 pure_cgroup_v2
check memcg_oom_kill memcg_oom_kill
check oom_tracepoint oom_tracepoint
check kernel_btf kernel_btf
check bpf_syscall bpf_syscall
check kprobes_available kprobes_available
check tcg_cpu_workaround tcg_cpu_workaround
check host_fs_read_only host_fs_read_only
echo
if [ $failed -eq 0 ]; then res=ok; else res=FAILED; fi
echo "test result: $res. $passed passed; $failed failed; 0 ignored; 0 measured; 0 filtered out"
[ $failed -eq 0 ] || exit 101

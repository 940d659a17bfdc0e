//! Test support shared by the unit tests in `netns_tests.rs` and the integration test
//! `cvm/tests/net_policy_launch.rs` (which includes this file by path): running a test
//! in a fresh network namespace.

/// Runs `f` on a thread in a new network namespace (the thread unshares one, so the
/// host's network is untouched and the namespace, its taps and tables vanish with the
/// thread; processes the thread starts inherit it); a panic fails the test. IPv6 is
/// off in the namespace by default, so the host's side sends no IPv6 chatter (router
/// solicitations, MLD) to disturb the counts; a test turns it on per interface.
pub fn in_netns(f: impl FnOnce() + Send + 'static) {
    let r = std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread to a new namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        // /proc/sys/net is the namespace of the process that opens it.
        let quiet = std::process::Command::new("sh")
            .args(["-c", "echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6 && echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6"])
            .status()
            .unwrap();
        assert!(quiet.success());
        f();
    })
    .join();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// Turns IPv6 on for the host's side of interface `name` only, without a link-local
/// address, router solicitations or router advertisements (so the host sends no DAD or
/// router solicitation to count; its MLD reports are dropped as `other_denied`).
pub fn enable_ipv6(name: &str) {
    for (k, v) in [
        ("addr_gen_mode", "1"),
        ("accept_ra", "0"),
        ("router_solicitations", "0"),
        ("disable_ipv6", "0"),
    ] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/{k}"), v).unwrap();
    }
}

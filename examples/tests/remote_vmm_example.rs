//! Runs the out-of-process VMM example as part of the test suite, with the
//! device server on a thread (a test cannot re-run itself as the server).

#[path = "../remote_vmm.rs"]
#[allow(dead_code)]
mod remote_vmm;

#[test]
fn the_remote_vmm_example_reads_the_disk_before_and_after_a_restore() {
    let report = remote_vmm::run(remote_vmm::Launch::Thread).expect("the example runs");
    assert_eq!(report.device_name, "storvsp");
    assert!(report.sectors_match, "sectors differ from the image");
    assert!(report.saved_bytes > 0);
}

//! Runs the VMM example end to end as part of the test suite.

#[path = "../vmm.rs"]
#[allow(dead_code)]
mod vmm;

#[test]
fn the_vmm_example_runs_both_devices_and_survives_save_restore() {
    let report = vmm::run().expect("the example runs");
    assert_eq!(report.file_bytes, vmm::HELLO.as_bytes());
    assert!(
        report.sectors_match,
        "sectors over storvsp differ from the image"
    );
    assert!(
        report.sub_channels >= 1,
        "storvsp sub-channel opened: {report:?}"
    );
    assert_eq!(report.after_restore_bytes, vmm::HELLO.as_bytes());
}

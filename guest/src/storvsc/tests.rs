//! The pure storvsc models: init steps and SCSI data parsers.

use super::*;

#[test]
fn uefi_refuses_a_zero_max_transfer() {
    let mut driver = InitDriver::new(GuestProfile::Uefi);
    let mut ok = vec![0u8; 0x30];
    ok[0] = 1;
    driver.on_completion(&ok).unwrap();
    driver.on_completion(&ok).unwrap();
    assert_eq!(
        driver.on_completion(&ok),
        Err(StorvscError::BadMaxTransfer(0))
    );
}

#[test]
fn parsers_refuse_short_data() {
    assert!(parse_inquiry(&[0; 4]).is_err());
    assert!(parse_vpd_supported(&[0, 0, 0, 9, 1]).is_err());
    assert!(parse_read_capacity10(&[0; 7]).is_err());
    assert!(parse_read_capacity16(&[0; 13]).is_err());
    assert!(parse_report_luns(&[0; 7]).is_err());
    assert!(SrbCompletion::parse(&[1, 0, 0, 0]).is_err());
    assert_eq!(
        completion_status(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(StorvscError::NotACompletion(9))
    );
}

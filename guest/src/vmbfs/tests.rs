//! The pure client half: paths, pipe bodies and reply parsers.

use super::*;

fn units(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

#[test]
fn child_path_reproduces_firmware_quirk() {
    let root = root_path();
    let efi = child_path(&root, "EFI");
    assert_eq!(efi, units("EFI"));
    assert_eq!(child_path(&efi, "BOOT"), units("EFI\\BOOT"));
    assert_eq!(child_path(&units("\\"), "EFI"), units("\\EFI"));
    let mut quirk = units("\\EFI\\BOOT");
    quirk.push(0);
    assert_eq!(child_path(&units("\\EFI\\"), "BOOT"), quirk);
    // A parent that itself carries the quirk NUL is read up to the NUL.
    assert_eq!(child_path(&quirk, "X"), units("\\EFI\\BOOT\\X"));
}

#[test]
fn setup_body_encoding() {
    let range = GpaRange::new(5000, 8, vec![9, 4]).unwrap();
    let setup = GpaDirectSetup {
        handle: 1,
        writable: true,
        ranges: vec![range.clone()],
    };
    let body = setup.encode();
    assert_eq!(&body[..4], &1u32.to_le_bytes());
    assert_eq!(body[4], 1);
    assert_eq!(&body[5..9], &1u32.to_le_bytes());
    let (ranges, used) = GpaRange::parse_list(&body[9..], 1).unwrap();
    assert_eq!(ranges, vec![range]);
    assert_eq!(9 + used, body.len());
}

#[test]
fn parsers_refuse_bad_hosts() {
    let mut reply = GetFileInfoResponse {
        header: MessageHeader::new(MessageType::GET_FILE_INFO_RESPONSE),
        status: U32::new(0),
        flags: U32::new(0),
        file_size: U64::new(0),
    }
    .as_bytes()
    .to_vec();
    reply.push(0);
    assert!(matches!(
        parse_file_info_response(&reply),
        Err(ClientError::BadHost { len: 25, .. })
    ));
    let mut read = ReadFileResponse {
        header: MessageHeader::new(MessageType::READ_FILE_RESPONSE),
        status: U32::new(0),
    }
    .as_bytes()
    .to_vec();
    read.extend_from_slice(&[1, 2, 3]);
    assert_eq!(parse_read_response(&read, 3), Ok(&[1u8, 2, 3][..]));
    assert!(matches!(
        parse_read_response(&read, 2),
        Err(ClientError::BadHost { .. })
    ));
    let refused = VersionResponse {
        header: MessageHeader::new(MessageType::VERSION_RESPONSE),
        status: U32::new(1),
    };
    assert_eq!(
        parse_version_response(refused.as_bytes()),
        Err(ClientError::VersionRefused(1))
    );
    let mut no_progress = FileRead::new(10, 0, 10);
    assert_eq!(
        no_progress.advance(0),
        Err(ClientError::NoProgress {
            offset: 0,
            size: 10
        })
    );
    let long = vec![u16::from(b'a'); 6141];
    assert!(matches!(
        read_request(&long, 0, 1),
        Err(ClientError::PathTooLong { .. })
    ));
}

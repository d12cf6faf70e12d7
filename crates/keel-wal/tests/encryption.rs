//! Encryption at rest on the real disk: nothing readable on disk, keys refused as keys (never as
//! damage, changing nothing), rotation, switching encryption on, and fresh nonces whenever an
//! LSN is written again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_wal::crypt::{KeyError, Keyring, SEAL_BYTES};
use keel_wal::format::{decode_frame, segment_seed, Decoded, SegmentHeader, SEGMENT_HEADER_BYTES};
use keel_wal::{Error, LogReader, Options, Wal};

const K1: &str = "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K1_WRONG: &str = "1 1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "2 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn opts(keys: Option<&str>) -> Options {
    Options {
        keyring: keys.map(|k| Arc::new(Keyring::parse(k).unwrap())),
        ..Options::small_for_tests()
    }
}

fn secret(i: u64) -> Vec<u8> {
    format!("TOPSECRET-{i:06}-value").into_bytes()
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_keys()
        .filter(|p| p.extension().is_some_and(|e| e == "open" || e == "sealed"))
        .collect()
}

fn read_all(dir: &Path, o: &Options) -> Result<Vec<Vec<u8>>, Error> {
    LogReader::open(dir, o)?
        .iter_from(1)?
        .map(|r| r.map(|r| r.payload))
        .collect()
}

/// Every frame of a segment file: (offset, lsn, payload bytes as stored).
fn frames(path: &Path) -> Vec<(usize, u64, Vec<u8>)> {
    let b = std::fs::read(path).unwrap();
    let h = SegmentHeader::decode(&b).unwrap();
    let mut off = SEGMENT_HEADER_BYTES;
    let mut out = Vec::new();
    while let Decoded::Frame(f) = decode_frame(&b[off..], segment_seed(h.segment_id), 1 << 20) {
        out.push((off, f.lsn, f.payload.to_vec()));
        off += f.total_bytes;
    }
    out
}

/// Flips a bit of the payload byte `at` of the frame at `off` in `seg` and recomputes both CRCs,
/// as someone altering the file would. Returns the file's new bytes.
fn alter_sealed(seg: &Path, off: usize, at: usize) -> Vec<u8> {
    let mut b = std::fs::read(seg).unwrap();
    let seed = segment_seed(SegmentHeader::decode(&b).unwrap().segment_id);
    let len = u32::from_le_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
    b[off + 32 + at] ^= 0x40;
    let pcrc = crc32c::crc32c_append(seed, &b[off + 32..off + 32 + len]);
    b[off + 28..off + 32].copy_from_slice(&pcrc.to_le_bytes());
    let hcrc = crc32c::crc32c_append(seed, &b[off + 4..off + 32]);
    b[off..off + 4].copy_from_slice(&hcrc.to_le_bytes());
    std::fs::write(seg, &b).unwrap();
    b
}

#[test]
fn an_encrypted_log_holds_no_plaintext_and_reads_back_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(Some(K1))).unwrap();
    for i in 0..800 {
        wal.append(&secret(i)).unwrap();
    }
    wal.append_batch(&[secret(1000), secret(1001)]).unwrap();
    wal.close().unwrap();
    let on_disk = files(dir.path());
    assert!(
        segment_files(dir.path()).len() > 1,
        "the test spans segments"
    );
    for (p, b) in &on_disk {
        assert!(
            !b.windows(9).any(|w| w == b"TOPSECRET"),
            "{} holds plaintext",
            p.display()
        );
    }
    for p in segment_files(dir.path()) {
        let b = std::fs::read(&p).unwrap();
        assert!(SegmentHeader::decode(&b).unwrap().encrypted);
        for (_, _, payload) in frames(&p) {
            assert_eq!(&payload[..4], &1u32.to_le_bytes(), "key id 1");
        }
    }
    let back = read_all(dir.path(), &opts(Some(K1))).unwrap();
    assert_eq!(back.len(), 802);
    assert_eq!(back[7], secret(7));
    assert_eq!(back[801], secret(1001));
    // Reopening appends with the key too.
    let (wal, report) = Wal::open(dir.path(), opts(Some(K1))).unwrap();
    assert_eq!(report.last_lsn, 802);
    wal.append(&secret(2000)).unwrap();
    let got: Vec<_> = wal
        .read_from(801)
        .unwrap()
        .map(|r| r.unwrap().payload)
        .collect();
    assert_eq!(got, vec![secret(1000), secret(1001), secret(2000)]);
}

#[test]
fn a_missing_unknown_or_wrong_key_is_a_key_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(Some(K1))).unwrap();
    for i in 0..50 {
        wal.append(&secret(i)).unwrap();
    }
    drop(wal); // no clean close: the log ends without a close mark
    let before = files(dir.path());
    for (keys, want) in [
        (None, "no encryption key"),
        (Some(K2), "not in the encryption keyring"),
        (Some(K1_WRONG), "does not decrypt with key id 1"),
    ] {
        let e = Wal::open(dir.path(), opts(keys)).expect_err("refused");
        assert!(matches!(e, Error::Key(_)), "{keys:?}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(want) && msg.contains("key"), "{msg}");
        assert!(!msg.contains("corrupt"), "{msg}");
        assert_eq!(files(dir.path()), before, "{keys:?} changed the directory");
    }
    // The checksums need no key: the log checks out without one, and reading says "key".
    let reader = LogReader::open(dir.path(), &opts(None)).unwrap();
    assert_eq!(reader.last_lsn(), 50);
    let e = reader.iter_from(1).unwrap().next().unwrap().unwrap_err();
    assert!(matches!(e, Error::Key(KeyError::Missing { .. })), "{e}");
    assert_eq!(read_all(dir.path(), &opts(Some(K1))).unwrap().len(), 50);
}

#[test]
fn altered_ciphertext_with_a_matching_checksum_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(Some(K1))).unwrap();
    for i in 0..20 {
        wal.append(&secret(i)).unwrap();
    }
    wal.close().unwrap();
    let seg = segment_files(dir.path()).pop().unwrap();
    let (off, lsn, _) = frames(&seg)[10];
    let mut b = alter_sealed(&seg, off, 4 + 24);
    let e = read_all(dir.path(), &opts(Some(K1))).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Key(KeyError::Decrypt { .. })), "{msg}");
    assert!(
        msg.contains(&format!("LSN {lsn}")) && msg.contains(&*seg.to_string_lossy()),
        "{msg}"
    );
    // A flipped byte without the checksum fixed is damage, reported as such.
    b[off + 40] ^= 1;
    std::fs::write(&seg, &b).unwrap();
    let e = Wal::open(dir.path(), opts(Some(K1))).err().unwrap();
    assert!(e.corruption().is_some(), "{e}");
}

#[test]
fn rotation_reads_old_keys_and_writes_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(Some(K1))).unwrap();
    for i in 0..10 {
        wal.append(&secret(i)).unwrap();
    }
    wal.close().unwrap();
    let both = format!("{K2}\n{K1}\n");
    let (wal, _) = Wal::open(dir.path(), opts(Some(&both))).unwrap();
    for i in 10..20 {
        wal.append(&secret(i)).unwrap();
    }
    wal.close().unwrap();
    let back = read_all(dir.path(), &opts(Some(&both))).unwrap();
    assert_eq!(back, (0..20).map(secret).collect::<Vec<_>>());
    let reader = LogReader::open(dir.path(), &opts(None)).unwrap();
    let ids: Vec<u32> = reader
        .segments()
        .iter()
        .flat_map(|s| s.key_ids.iter().map(|k| k.0))
        .collect();
    assert_eq!(ids, vec![1, 2]);
    // Key 1 is still needed: retiring it early is refused as a key error.
    let e = Wal::open(dir.path(), opts(Some(K2))).err().unwrap();
    assert!(
        matches!(e, Error::Key(KeyError::Unknown { id: 1, .. })),
        "{e}"
    );
}

#[test]
fn switching_encryption_on_starts_an_encrypted_segment_and_off_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(None)).unwrap();
    for i in 0..10 {
        wal.append(&secret(i)).unwrap();
    }
    wal.close().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(Some(K1))).unwrap();
    for i in 10..20 {
        wal.append(&secret(i)).unwrap();
    }
    wal.close().unwrap();
    let segs = segment_files(dir.path());
    let kinds: Vec<bool> = segs
        .iter()
        .map(|p| {
            SegmentHeader::decode(&std::fs::read(p).unwrap())
                .unwrap()
                .encrypted
        })
        .collect();
    assert_eq!(kinds, vec![false, true]);
    assert_eq!(
        read_all(dir.path(), &opts(Some(K1))).unwrap(),
        (0..20).map(secret).collect::<Vec<_>>()
    );
    let e = Wal::open(dir.path(), opts(None)).err().unwrap();
    assert!(matches!(e, Error::Key(KeyError::Missing { .. })), "{e}");

    // An empty active segment of the other kind is replaced, not sealed empty.
    let fresh = tempfile::tempdir().unwrap();
    Wal::create_at(fresh.path(), 77, opts(None)).unwrap();
    let (wal, _) = Wal::open(fresh.path(), opts(Some(K1))).unwrap();
    assert_eq!(wal.append(&secret(77)).unwrap(), 77);
    wal.close().unwrap();
    let segs = segment_files(fresh.path());
    assert_eq!(segs.len(), 1);
    assert!(
        SegmentHeader::decode(&std::fs::read(&segs[0]).unwrap())
            .unwrap()
            .encrypted
    );
    let r = LogReader::open(fresh.path(), &opts(Some(K1))).unwrap();
    assert_eq!(
        r.iter_from(77).unwrap().next().unwrap().unwrap().payload,
        secret(77)
    );
}

/// The nonce trap: the same LSN written twice under one key, after `truncate_after` and after
/// a reopen that cut a torn tail, must never get the same nonce.
#[test]
fn an_lsn_written_again_never_reuses_a_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let nonce_of = |lsn: u64| -> Vec<u8> {
        for p in segment_files(dir.path()) {
            for (_, l, payload) in frames(&p) {
                if l == lsn {
                    return payload[4..4 + 24].to_vec();
                }
            }
        }
        panic!("LSN {lsn} not found")
    };
    let mut seen = std::collections::HashSet::new();
    let (wal, _) = Wal::open(dir.path(), opts(Some(K1))).unwrap();
    for i in 1..=20 {
        wal.append(&secret(i)).unwrap();
    }
    assert!(seen.insert(nonce_of(15)));
    for round in 0..3 {
        wal.truncate_after(14).unwrap();
        for i in 15..=20 {
            assert_eq!(wal.append(&secret(i)).unwrap(), i, "round {round}");
        }
        assert!(
            seen.insert(nonce_of(15)),
            "a nonce came back after truncate_after"
        );
    }
    drop(wal);
    // Rewrite after reopening: a new process, a new random nonce prefix.
    for _ in 0..3 {
        let (wal, _) = Wal::open(dir.path(), opts(Some(K1))).unwrap();
        wal.truncate_after(14).unwrap();
        wal.append(&secret(15)).unwrap();
        drop(wal);
        assert!(
            seen.insert(nonce_of(15)),
            "a nonce came back after a reopen"
        );
    }
    assert_eq!(SEAL_BYTES, 44);
}

/// `rekey` rewrites plaintext and old-key segments with the first key; afterwards the old key
/// can be retired, and every record reads back.
#[test]
fn rekey_rewrites_plaintext_and_old_keys_so_old_keys_can_be_retired() {
    let dir = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    for (keys, range) in [(None, 0..400), (Some(K1), 400..800)] {
        let (wal, _) = Wal::open(dir.path(), opts(keys)).unwrap();
        for i in range {
            wal.append_batch(&[secret(i), secret(i + 10_000)]).unwrap();
            want.extend([secret(i), secret(i + 10_000)]);
        }
        wal.close().unwrap();
    }
    let both = format!("{K2}\n{K1}\n");
    let (wal, _) = Wal::open(dir.path(), opts(Some(&both))).unwrap();
    wal.append(&secret(99_999)).unwrap();
    want.push(secret(99_999));
    wal.close().unwrap();

    let rewritten = keel_wal::rekey(dir.path(), &opts(Some(&both))).unwrap();
    assert!(rewritten.len() >= 3, "{rewritten:?}");
    assert_eq!(read_all(dir.path(), &opts(Some(K2))).unwrap(), want);
    let reader = LogReader::open(dir.path(), &opts(Some(K2))).unwrap();
    assert!(reader.segments().iter().all(|s| s.encrypted));
    assert!(
        reader.end_mark().is_some_and(|m| m.closed),
        "the close mark is kept"
    );
    for (p, b) in files(dir.path()) {
        assert!(!b.windows(9).any(|w| w == b"TOPSECRET"), "{}", p.display());
    }
    // Nothing left to do; and the log opens and appends with the new key alone.
    assert!(keel_wal::rekey(dir.path(), &opts(Some(K2)))
        .unwrap()
        .is_empty());
    let (wal, _) = Wal::open(dir.path(), opts(Some(K2))).unwrap();
    wal.append(&secret(5)).unwrap();
    wal.close().unwrap();
}

/// A truncation back into a plaintext segment, leaving it empty, after encryption was switched
/// on: the next records go to an encrypted segment, never sealed into a version 1 one.
#[test]
fn a_truncation_into_an_empty_plaintext_segment_writes_encrypted_again() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(None)).unwrap();
    let mut i = 0;
    while wal.segments().len() < 3 {
        wal.append(&secret(i)).unwrap();
        i += 1;
    }
    let second = wal.segments()[1].clone();
    wal.close().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts(Some(K1))).unwrap();
    wal.append(&secret(i)).unwrap();
    // Back to the start of the second (plaintext) segment: it stays, empty.
    wal.truncate_after(second.first_lsn - 1).unwrap();
    assert!(!wal.segments().last().unwrap().encrypted);
    let lsn = wal.append(b"AFTER-TRUNCATION").unwrap();
    assert_eq!(lsn, second.first_lsn);
    wal.close().unwrap();
    let reader = LogReader::open(dir.path(), &opts(Some(K1))).unwrap();
    let last = reader.segments().last().unwrap();
    assert!(last.encrypted && last.first_lsn == lsn, "{last:?}");
    let got = reader.iter_from(lsn).unwrap().next().unwrap().unwrap();
    assert_eq!(got.payload, b"AFTER-TRUNCATION");
    assert_nowhere_plain(dir.path(), b"AFTER-TRUNCATION");
}

fn assert_nowhere_plain(dir: &Path, needle: &[u8]) {
    for (p, b) in files(dir) {
        assert!(
            !b.windows(needle.len()).any(|w| w == needle),
            "{}",
            p.display()
        );
    }
}

/// The record size limit is the record's, not the sealed payload's: a record of exactly
/// `record_bytes_max` is sealed, recovered and read back; one byte more is refused.
#[test]
fn a_record_of_record_bytes_max_is_sealed_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(Some(K1));
    let max = o.record_bytes_max as usize;
    let (wal, _) = Wal::open(dir.path(), o.clone()).unwrap();
    let big = vec![7u8; max];
    wal.append(&big).unwrap();
    assert!(matches!(
        wal.append(&vec![7u8; max + 1]),
        Err(Error::RecordTooLarge { .. })
    ));
    wal.append(b"after").unwrap();
    drop(wal); // no close mark: recovery walks every frame
    let (wal, report) = Wal::open(dir.path(), o).unwrap();
    assert_eq!((report.last_lsn, report.torn_tail.is_none()), (2, true));
    let got: Vec<_> = wal
        .read_from(1)
        .unwrap()
        .map(|r| r.unwrap().payload)
        .collect();
    assert_eq!(got, vec![big, b"after".to_vec()]);
}

/// A long read of one encrypted segment: every record comes back in order, a read from the
/// middle starts where it should, and a record altered in the middle (its CRCs recomputed) ends
/// the iteration there with a key error, after every record before it.
#[test]
fn a_long_read_comes_back_in_order_and_stops_at_an_altered_record() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        segment_bytes_max: 1 << 20,
        ..opts(Some(K1))
    };
    let (wal, _) = Wal::open(dir.path(), o.clone()).unwrap();
    for i in 0..3000 {
        wal.append(&secret(i)).unwrap();
    }
    wal.close().unwrap();
    let seg = segment_files(dir.path()).remove(0);
    assert!(frames(&seg).len() > 2000, "one segment holds them");
    let all = read_all(dir.path(), &o).unwrap();
    assert_eq!(all, (0..3000).map(secret).collect::<Vec<_>>());
    let r = LogReader::open(dir.path(), &o).unwrap();
    let mid: Vec<_> = r
        .iter_from(1501)
        .unwrap()
        .take(3)
        .map(|x| x.unwrap().lsn)
        .collect();
    assert_eq!(mid, vec![1501, 1502, 1503]);

    let (off, lsn, _) = frames(&seg)[1234];
    alter_sealed(&seg, off, 28);
    let got: Vec<_> = LogReader::open(dir.path(), &o)
        .unwrap()
        .iter_from(1)
        .unwrap()
        .collect();
    assert_eq!(
        got.len(),
        lsn as usize,
        "the records before it, then the error, then nothing"
    );
    assert!(got[..lsn as usize - 1].iter().all(|r| r.is_ok()));
    let e = got.last().unwrap().as_ref().unwrap_err();
    assert!(e.to_string().contains(&format!("LSN {lsn}")), "{e}");
}

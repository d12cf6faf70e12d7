//! `Wal::open_from`: damage wholly below the LSNs a caller needs is reported, not fatal; damage
//! that touches them still fails closed.

use std::path::{Path, PathBuf};

use keel_wal::{Error, LogReader, Options, Wal};

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".sealed") || n.ends_with(".open")
        })
        .collect();
    v.sort();
    v
}

/// (first, last) from a sealed segment's name.
fn range(p: &Path) -> (u64, u64) {
    let n = p.file_name().unwrap().to_string_lossy().into_owned();
    (n[4..24].parse().unwrap(), n[25..45].parse().unwrap())
}

fn fill(dir: &Path) -> u64 {
    let (wal, _) = Wal::open(dir, Options::small_for_tests()).unwrap();
    let mut last = 0;
    for i in 0..1500u32 {
        last = wal.append(&[(i % 251) as u8; 200]).unwrap();
    }
    wal.close().unwrap();
    last
}

fn flip(p: &Path, at: u64) {
    let mut b = std::fs::read(p).unwrap();
    b[at as usize] ^= 1;
    std::fs::write(p, &b).unwrap();
}

#[test]
fn damage_below_needed_from_is_left_out_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let last = fill(dir.path());
    let segs = segments(dir.path());
    assert!(segs.len() >= 4, "{segs:?}");
    let (_, damaged_last) = range(&segs[1]);
    flip(&segs[1], 64 + 100);
    // Needing everything: corruption, as before.
    assert!(matches!(
        Wal::open(dir.path(), Options::small_for_tests()),
        Err(Error::Corruption(_))
    ));
    // Needing only what follows the damaged segment: it opens and reads from there.
    let needed = damaged_last + 1;
    let (wal, report) = Wal::open_from(
        dir.path(),
        Options::small_for_tests(),
        needed,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.unneeded_damage.len(), 1, "{report}");
    let d = &report.unneeded_damage[0];
    assert_eq!(d.files_left_out, segs[..2].to_vec());
    assert_eq!(d.lsns, (1, damaged_last));
    assert_eq!(wal.first_lsn(), needed);
    assert_eq!(wal.last_lsn(), last);
    let n = wal.read_from(needed).unwrap().count() as u64;
    assert_eq!(n, last - needed + 1);
    // Appends and pruning go on; the left-out files stay.
    wal.append(b"more").unwrap();
    wal.prune_before(needed).unwrap();
    wal.close().unwrap();
    assert!(segs[0].exists() && segs[1].exists());
    let r = LogReader::open_from(
        dir.path(),
        &Options::small_for_tests(),
        needed,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.unneeded_damage().len(), 1);
    // Needing an LSN inside the damaged segment: fails closed.
    assert!(matches!(
        Wal::open_from(
            dir.path(),
            Options::small_for_tests(),
            damaged_last,
            &mut |_, _| {}
        ),
        Err(Error::Corruption(_))
    ));
}

#[test]
fn a_missing_segment_below_needed_from_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let last = fill(dir.path());
    let segs = segments(dir.path());
    std::fs::remove_file(&segs[1]).unwrap();
    let (second_first, _) = range(&segs[2]);
    assert!(matches!(
        Wal::open(dir.path(), Options::small_for_tests()),
        Err(Error::Corruption(_))
    ));
    let (wal, report) = Wal::open_from(
        dir.path(),
        Options::small_for_tests(),
        second_first,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        report.unneeded_damage[0].files_left_out,
        vec![segs[0].clone()]
    );
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (second_first, last));
    wal.close().unwrap();
    // One LSN earlier is needed and missing.
    assert!(Wal::open_from(
        dir.path(),
        Options::small_for_tests(),
        second_first - 1,
        &mut |_, _| {}
    )
    .is_err());
}

#[test]
fn a_forced_repair_never_cuts_below_needed_from() {
    let dir = tempfile::tempdir().unwrap();
    let last = fill(dir.path());
    let segs = segments(dir.path());
    let (first, seg_last) = range(&segs[1]);
    flip(&segs[1], 20); // its header: no frame of it can be trusted
                        // The snapshot needs the log from inside the damaged segment: a cut there would end the
                        // log before it. Refused; nothing changed.
    let err = keel_wal::repair_from(dir.path(), Options::small_for_tests(), true, seg_last)
        .err()
        .unwrap();
    assert!(matches!(err, Error::CutBelowNeeded { .. }), "{err}");
    assert_eq!(segments(dir.path()), segs);
    // Needed only after it: the damage is left in place and nothing is cut.
    let r =
        keel_wal::repair_from(dir.path(), Options::small_for_tests(), true, seg_last + 1).unwrap();
    assert!(r.forced_cuts.is_empty());
    assert_eq!(r.recovery.last_lsn, last);
    assert_eq!(segments(dir.path()), segs);
    // Needed from the start: the old forced cut.
    let r = keel_wal::repair_from(dir.path(), Options::small_for_tests(), true, 1).unwrap();
    assert_eq!(r.forced_cuts.len(), 1);
    assert_eq!(r.recovery.last_lsn, first - 1);
}

#[test]
fn a_forced_repair_restarts_the_segment_holding_needed_from_past_damage_below_it() {
    for open_segment in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let last = fill(dir.path());
        let segs = segments(dir.path());
        let (target, first) = if open_segment {
            let p = segs.last().unwrap().clone();
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            let first: u64 = n[4..24].parse().unwrap();
            (p, first)
        } else {
            (segs[2].clone(), range(&segs[2]).0)
        };
        flip(&target, 64 + 100); // the first frame: LSN `first`
        let needed = first + 5;
        assert!(Wal::open_from(
            dir.path(),
            Options::small_for_tests(),
            needed,
            &mut |_, _| {}
        )
        .is_err());
        let r =
            keel_wal::repair_from(dir.path(), Options::small_for_tests(), true, needed).unwrap();
        assert_eq!(r.forced_cuts.len(), 1, "open {open_segment}");
        let cut = &r.forced_cuts[0];
        assert!(cut.restarted_at.is_some());
        assert!(cut
            .quarantined
            .iter()
            .any(|q| q.file_name() == target.file_name()));
        let (wal, _) = Wal::open_from(
            dir.path(),
            Options::small_for_tests(),
            needed,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!((wal.first_lsn(), wal.last_lsn()), (needed, last));
        let lsns: Vec<u64> = wal
            .read_from(needed)
            .unwrap()
            .map(|r| r.unwrap().lsn)
            .collect();
        assert_eq!(lsns, (needed..=last).collect::<Vec<_>>());
        // The log goes on: appends after it, and a full open needs nothing below.
        assert_eq!(wal.append(b"next").unwrap(), last + 1);
        wal.close().unwrap();
        let (wal, report) = Wal::open(dir.path(), Options::small_for_tests()).unwrap();
        assert!(report.unneeded_damage.is_empty(), "{report}");
        assert_eq!((wal.first_lsn(), wal.last_lsn()), (needed, last + 1));
        wal.close().unwrap();
    }
}

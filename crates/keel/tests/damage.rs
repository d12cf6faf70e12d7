//! Damage to a real `keel serve` database on a real disk, and what keel does about it.

use std::path::{Path, PathBuf};
use std::thread;

use keel_wal::format::{decode_frame, segment_seed, Decoded, SegmentHeader};

mod common;
use common::*;

const WRITERS: usize = 8;
const PER_WRITER: usize = 500;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The newest log segment of a database directory.
fn last_segment(data: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("wal-") && (n.ends_with(".open") || n.ends_with(".sealed"))
        })
        .collect();
    segs.sort();
    segs.pop().expect("a log segment")
}

/// Offset of the first frame of the last group commit in `seg`: every frame one write carries
/// records the same durable LSN (what the sync before it covered), so the last group commit is
/// the run of frames at the end that share the last frame's durable LSN.
fn first_frame_of_last_group_commit(seg: &Path) -> (usize, usize, u64) {
    let bytes = std::fs::read(seg).unwrap();
    let seed = segment_seed(SegmentHeader::decode(&bytes).unwrap().segment_id);
    let mut off = 64;
    let mut frames = Vec::new();
    while let Decoded::Frame(f) = decode_frame(&bytes[off..], seed, 1 << 30) {
        frames.push((off, f.payload.len(), f.lsn, f.durable_lsn));
        off += f.total_bytes;
    }
    let &(_, _, _, last_durable) = frames.last().expect("frames in the last segment");
    let group: Vec<_> = frames
        .iter()
        .filter(|f| f.3 == last_durable)
        .copied()
        .collect();
    assert!(
        group.len() > 1,
        "the last group commit should hold several frames: {group:?}"
    );
    let (offset, payload_len, lsn, _) = group[0];
    assert!(payload_len > 0);
    (offset, group.len(), lsn)
}

/// Issue #17, item 1: after a clean SIGTERM, a flipped byte in the last group commit was cut as
/// a torn tail and its acknowledged keys silently dropped. The log now ends with a close mark
/// that proves every frame durable, so keel refuses to start instead, and says where and what
/// to run.
#[test]
fn damage_in_the_last_group_commit_after_a_clean_shutdown_refuses_to_start() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("data");
    let srv = Server::start(&dir, &[]);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = srv.url();
            thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                let mut pipe = redis::pipe();
                for i in 0..PER_WRITER {
                    pipe.cmd("SET").arg(format!("k:{w}:{i}")).arg(i);
                }
                let replies: Vec<String> = pipe.query(&mut con).unwrap();
                assert_eq!(replies.len(), PER_WRITER);
                assert!(replies.iter().all(|r| r == "OK"), "{replies:?}");
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let log = srv.log.clone();
    let status = srv.sigterm();
    assert_eq!(status.code(), Some(0), "{:?}", log.lock().unwrap());
    // The log reader thread may still be collecting the last lines: poll for the one we need.
    let deadline = std::time::Instant::now() + DEADLINE;
    while !log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("shut down cleanly"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            log.lock().unwrap()
        );
        thread::sleep(std::time::Duration::from_millis(10));
    }

    let damaged_t = tempfile::tempdir().unwrap();
    let damaged = damaged_t.path().join("data");
    copy_tree(&dir, &damaged);
    let seg = last_segment(&damaged);
    let (offset, frames, lsn) = first_frame_of_last_group_commit(&seg);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[offset + 32] ^= 0x01; // the first payload byte
    std::fs::write(&seg, &bytes).unwrap();

    let Err((status, log)) = Server::try_start(&damaged, &[]) else {
        panic!(
            "keel started on a log whose last group commit ({frames} frames from LSN {lsn}) \
             is damaged"
        );
    };
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log:?}");
    let text = log.join("\n");
    assert!(text.contains("refuses to start"), "{text}");
    assert!(
        text.contains(&seg.display().to_string()),
        "names the file: {text}"
    );
    assert!(
        text.contains(&format!("offset {offset}")),
        "names the offset {offset}: {text}"
    );
    assert!(
        text.contains("keel wal verify") && text.contains("keel wal repair"),
        "names the commands: {text}"
    );
    assert!(!text.contains("torn tail cut"), "{text}");

    // Undamaged, every acknowledged key is there, and the log says it was closed cleanly.
    let srv = Server::start(&dir, &[]);
    assert!(
        srv.log_text().contains("closed cleanly at LSN"),
        "{}",
        srv.log_text()
    );
    let mut con = srv.client();
    for w in 0..WRITERS {
        let keys: Vec<String> = (0..PER_WRITER).map(|i| format!("k:{w}:{i}")).collect();
        let values: Vec<Option<usize>> = redis::cmd("MGET").arg(&keys).query(&mut con).unwrap();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(*v, Some(i), "k:{w}:{i} lost");
        }
    }
}

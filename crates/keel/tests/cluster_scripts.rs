//! Scripts and functions on a keel cluster of real `keel serve` processes: the leader runs a
//! script as a dry run and proposes its writes under the versions it saw, so concurrent
//! scripts lose no update, every replica holds the script's effects, a script that errors
//! after a write keeps the write, and a function library survives a leader change.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::cluster::*;

fn connect(addr: &str) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

const INCR_AND_LOG: &str = "local n = redis.call('INCR', KEYS[1]) \
    redis.call('RPUSH', KEYS[2], n) return n";

#[test]
fn scripts_and_functions_run_on_the_leader_lose_no_update_and_survive_a_leader_change() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(&[], tmp.path());
    let lead = leader(&nodes);
    let mut c = connect(&lead);

    // Concurrent scripts on one key: each sees the count the one before it left.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let lead = lead.clone();
            thread::spawn(move || {
                let mut c = connect(&lead);
                (0..25)
                    .map(|_| {
                        redis::cmd("EVAL")
                            .arg(INCR_AND_LOG)
                            .arg(2)
                            .arg("{k}n")
                            .arg("{k}log")
                            .query::<i64>(&mut c)
                            .unwrap()
                    })
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let mut got: Vec<i64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=100).collect::<Vec<i64>>(), "every reply once");
    let log: Vec<i64> = redis::cmd("LRANGE")
        .arg("{k}log")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(log, (1..=100).collect::<Vec<i64>>(), "in order, none lost");

    // A script that writes, then fails: the write stays, as in Redis.
    let err = redis::cmd("EVAL")
        .arg("redis.call('SET', KEYS[1], 'kept') return redis.error_reply('boom')")
        .arg(1)
        .arg("half")
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    let kept: String = redis::cmd("GET").arg("half").query(&mut c).unwrap();
    assert_eq!(kept, "kept");

    // A follower sends the client to the leader.
    let follower = nodes.iter().map(Node::addr).find(|a| *a != lead).unwrap();
    let err = redis::cmd("EVAL")
        .arg("return redis.call('GET', KEYS[1])")
        .arg(1)
        .arg("half")
        .query::<redis::Value>(&mut connect(&follower))
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("moved"), "{err}");
    // Scripts queued in MULTI are refused with a clear error.
    let err = redis::pipe()
        .atomic()
        .cmd("EVAL")
        .arg("return 1")
        .arg(0)
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert!(
        err.to_string().contains("does not queue scripts in MULTI"),
        "{err}"
    );

    // A library loaded on this leader answers FCALL on the next one.
    let lib = "#!lua name=counter\n\
        redis.register_function('bump', function(keys, args) \
        return redis.call('INCRBY', keys[1], args[1]) end)";
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib)
        .query(&mut c)
        .unwrap();
    assert_eq!(name, "counter");
    let n: i64 = redis::cmd("FCALL")
        .arg("bump")
        .arg(1)
        .arg("{k}n")
        .arg(10)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 110);
    let old = nodes.iter().position(|n| n.addr() == lead).unwrap();
    nodes[old].server.take().unwrap().kill9();
    let deadline = Instant::now() + Duration::from_secs(60);
    let n: i64 = loop {
        let lead = leader(&nodes);
        let bumped = redis::Client::open(format!("redis://{lead}/"))
            .and_then(|cl| cl.get_connection())
            .and_then(|mut c| {
                redis::cmd("FCALL")
                    .arg("bump")
                    .arg(1)
                    .arg("{k}n")
                    .arg(1)
                    .query::<i64>(&mut c)
            });
        match bumped {
            Ok(n) => break n,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        thread::sleep(Duration::from_millis(200));
    };
    // 111, or more if an earlier try took effect before its reply was lost in the election.
    assert!(n >= 111, "{n}");
    let lead = leader(&nodes);
    let mut c = connect(&lead);
    let log_len: i64 = redis::cmd("LLEN").arg("{k}log").query(&mut c).unwrap();
    assert_eq!(log_len, 100);
    let libs: redis::Value = redis::cmd("FUNCTION").arg("LIST").query(&mut c).unwrap();
    assert!(format!("{libs:?}").contains("bump"), "{libs:?}");
}

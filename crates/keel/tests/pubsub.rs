//! Pub/Sub through `keel serve`: RESP2's subscribed mode, RESP3 pushes, patterns, shard
//! channels, PUBSUB's counts and the bound on a subscriber that does not read.

mod common;
use common::*;

/// Reads one RESP2 reply and renders it compactly (for arrays of bulk strings and integers).
fn read_push(raw: &mut Raw) -> String {
    String::from_utf8(read_reply(raw)).unwrap()
}

#[test]
fn subscribe_publish_and_patterns_on_resp2() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut sub = srv.raw();
    sub.cmd(
        &["SUBSCRIBE", "news", "sport"],
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$5\r\nsport\r\n:2\r\n",
    );
    sub.cmd(
        &["PSUBSCRIBE", "n*"],
        "*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:3\r\n",
    );
    // Subscribed mode: only the subscription commands, PING, QUIT and RESET.
    sub.cmd(
        &["GET", "k"],
        "-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
    );
    sub.cmd(&["PING"], "*2\r\n$4\r\npong\r\n$0\r\n\r\n");

    let mut c = srv.client();
    assert_eq!(query::<i64>(&mut c, &["PUBLISH", "news", "hello"]), 2);
    assert_eq!(query::<i64>(&mut c, &["PUBLISH", "nobody", "x"]), 1);
    assert_eq!(query::<i64>(&mut c, &["PUBLISH", "other", "x"]), 0);
    assert_eq!(
        read_push(&mut sub),
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
    );
    assert_eq!(
        read_push(&mut sub),
        "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
    );
    assert_eq!(
        read_push(&mut sub),
        "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$6\r\nnobody\r\n$1\r\nx\r\n"
    );

    // PUBSUB sees the subscriptions; NUMSUB answers integers.
    let channels: Vec<String> = query(&mut c, &["PUBSUB", "CHANNELS"]);
    assert_eq!(channels, ["news", "sport"]);
    let numsub: Vec<redis::Value> = query(&mut c, &["PUBSUB", "NUMSUB", "news", "none"]);
    assert_eq!(
        numsub,
        [
            redis::Value::BulkString(b"news".to_vec()),
            redis::Value::Int(1),
            redis::Value::BulkString(b"none".to_vec()),
            redis::Value::Int(0)
        ]
    );
    assert_eq!(query::<i64>(&mut c, &["PUBSUB", "NUMPAT"]), 1);

    // UNSUBSCRIBE without names drops every channel; the pattern remains.
    sub.send(&resp(&["UNSUBSCRIBE"]));
    let a = read_push(&mut sub);
    let b = read_push(&mut sub);
    let mut both = [a, b];
    both.sort();
    assert!(
        both[0].contains("$4\r\nnews\r\n") && both[1].contains("$5\r\nsport\r\n"),
        "{both:?}"
    );
    assert!(both.iter().any(|r| r.ends_with(":1\r\n")), "{both:?}");
    sub.cmd(
        &["PUNSUBSCRIBE"],
        "*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:0\r\n",
    );
    // Out of subscribed mode, commands run again; a disconnect leaves nothing behind.
    sub.cmd(&["PING"], "+PONG\r\n");
    sub.cmd(
        &["SUBSCRIBE", "news"],
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
    );
    drop(sub);
    let mut tries = 0;
    while query::<Vec<String>>(&mut c, &["PUBSUB", "CHANNELS"]) != Vec::<String>::new() {
        tries += 1;
        assert!(tries < 500, "the closed subscriber's channel stayed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn resp3_pushes_interleave_with_replies_and_multi_publishes() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.raw();
    c.send(&resp(&["HELLO", "3"]));
    read_reply(&mut c);
    c.cmd(
        &["SUBSCRIBE", "foo"],
        ">3\r\n$9\r\nsubscribe\r\n$3\r\nfoo\r\n:1\r\n",
    );
    // RESP3: any command runs while subscribed.
    c.cmd(&["SET", "k", "v"], "+OK\r\n");
    // PUBLISH inside MULTI runs at EXEC; the messages follow EXEC's reply.
    c.cmd(&["MULTI"], "+OK\r\n");
    c.cmd(&["PUBLISH", "foo", "bar"], "+QUEUED\r\n");
    c.cmd(&["GET", "k"], "+QUEUED\r\n");
    c.cmd(
        &["EXEC"],
        "*2\r\n:1\r\n$1\r\nv\r\n>3\r\n$7\r\nmessage\r\n$3\r\nfoo\r\n$3\r\nbar\r\n",
    );
    // Shard channels are their own namespace.
    c.cmd(
        &["SSUBSCRIBE", "s1"],
        ">3\r\n$10\r\nssubscribe\r\n$2\r\ns1\r\n:1\r\n",
    );
    let mut p = srv.client();
    assert_eq!(query::<i64>(&mut p, &["SPUBLISH", "s1", "m"]), 1);
    assert_eq!(query::<i64>(&mut p, &["PUBLISH", "s1", "m"]), 0);
    assert_eq!(
        String::from_utf8(read_reply(&mut c)).unwrap(),
        ">3\r\n$8\r\nsmessage\r\n$2\r\ns1\r\n$1\r\nm\r\n"
    );
    let shard: Vec<String> = query(&mut p, &["PUBSUB", "SHARDCHANNELS"]);
    assert_eq!(shard, ["s1"]);
    // RESET drops every subscription.
    c.cmd(&["RESET"], "+RESET\r\n");
    assert_eq!(query::<i64>(&mut p, &["PUBLISH", "foo", "x"]), 0);
}

/// A RESP2 connection subscribed to `channel`, its confirmation checked.
fn subscribed(srv: &Server, channel: &str) -> Raw {
    let mut sub = srv.raw();
    let confirmed = format!(
        "*3\r\n$9\r\nsubscribe\r\n${}\r\n{channel}\r\n:1\r\n",
        channel.len()
    );
    sub.cmd(&["SUBSCRIBE", channel], &confirmed);
    sub
}

/// CLIENT LIST's omem of the first client subscribed to something.
fn subscriber_omem(c: &mut redis::Connection) -> u64 {
    let list: String = query(c, &["CLIENT", "LIST"]);
    let line = list
        .lines()
        .find(|l| l.contains(" sub=1 "))
        .expect("the subscriber is listed");
    let field = |name: &str| -> u64 {
        (line.split(' '))
            .find_map(|f| f.strip_prefix(name))
            .expect("the field is there")
            .parse()
            .unwrap()
    };
    let omem = field("omem=");
    assert_eq!(field("tot-mem="), omem + field("qbuf="), "{line}");
    omem
}

/// CLIENT LIST's omem shows what waits for a subscriber that stopped reading, within the
/// bound, and goes back to 0 once it has read everything.
#[test]
fn client_list_shows_what_waits_for_a_subscriber() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut sub = subscribed(&srv, "slow");
    let mut c = srv.client();
    // Nothing waits once the confirmation is read (the connection notes that its write ended
    // just after the client has the bytes, so this may take a moment).
    let nothing_waits = |c: &mut redis::Connection| {
        let started = std::time::Instant::now();
        while subscriber_omem(c) != 0 {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    nothing_waits(&mut c);
    // 24 MiB published, under the 32 MiB bound; the sockets hold a few MiB at most, so most
    // of it waits in keel.
    let chunk = "x".repeat(1 << 20);
    for _ in 0..24 {
        assert_eq!(query::<i64>(&mut c, &["PUBLISH", "slow", &chunk]), 1);
    }
    let waiting = subscriber_omem(&mut c);
    assert!(
        (8 << 20..=33 << 20).contains(&waiting),
        "omem {waiting} after 24 MiB published to a client that reads nothing"
    );
    for _ in 0..24 {
        let m = read_reply(&mut sub);
        assert!(m.ends_with(format!("{chunk}\r\n").as_bytes()));
    }
    nothing_waits(&mut c);
}

#[test]
fn a_subscriber_that_does_not_read_is_disconnected_not_buffered() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let _sub = subscribed(&srv, "firehose");
    // The subscriber reads nothing while 64 MiB are published at it: past the server's bound
    // (32 MiB waiting) it is closed, and publishing then reaches no one.
    let mut c = srv.client();
    let chunk = "x".repeat(1 << 20);
    let mut reached = Vec::new();
    for _ in 0..64 {
        reached.push(query::<i64>(&mut c, &["PUBLISH", "firehose", &chunk]));
    }
    let mut tries = 0;
    while query::<i64>(&mut c, &["PUBLISH", "firehose", "x"]) != 0 {
        tries += 1;
        assert!(
            tries < 500,
            "a subscriber that reads nothing stayed subscribed: {reached:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let info: String = query(&mut c, &["INFO", "memory"]);
    let rss: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory_rss:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(rss < 1 << 30, "rss {rss}");
}

//! CLIENT TRACKING through `keel serve`: invalidations of keys a client read, in RESP3 pushes
//! and through REDIRECT in RESP2, BCAST prefixes, NOLOOP, OPTIN, FLUSHALL and expiry.

mod common;
use common::*;

fn resp3(srv: &Server) -> Raw {
    let mut c = srv.raw();
    c.send(&resp(&["HELLO", "3"]));
    read_reply(&mut c);
    c
}

fn text(r: Vec<u8>) -> String {
    String::from_utf8(r).unwrap()
}

#[test]
fn resp3_invalidation_follows_the_reply_of_the_write_that_causes_it() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = resp3(&srv);
    c.cmd(&["CLIENT", "TRACKING", "ON"], "+OK\r\n");
    c.cmd(&["HSET", "h", "f", "1"], ":1\r\n");
    c.cmd(&["HGET", "h", "f"], "$1\r\n1\r\n");
    // The write's reply first, then the invalidation of the key this connection read.
    c.cmd(
        &["HDEL", "h", "f"],
        ":1\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nh\r\n",
    );
    // Another client's write invalidates too; a key not read does not.
    c.cmd(&["GET", "k"], "_\r\n");
    let mut other = srv.client();
    query::<()>(&mut other, &["SET", "unread", "1"]);
    query::<()>(&mut other, &["SET", "k", "1"]);
    assert_eq!(
        text(read_reply(&mut c)),
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
    );
    // FLUSHALL invalidates everything at once (a null list).
    query::<()>(&mut other, &["FLUSHALL"]);
    assert_eq!(text(read_reply(&mut c)), ">2\r\n$10\r\ninvalidate\r\n_\r\n");
    c.cmd(&["CLIENT", "GETREDIR"], ":0\r\n");
}

#[test]
fn redirect_bcast_noloop_optin_and_trackinginfo() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut sink = srv.raw();
    sink.send(&resp(&["CLIENT", "ID"]));
    let id = text(read_reply(&mut sink))
        .trim()
        .trim_start_matches(':')
        .to_string();
    cmd_reply(&mut sink, &["SUBSCRIBE", "__redis__:invalidate"]);
    let mut c = srv.raw();
    let mut w = srv.client();
    let message = |keys: &[&str]| {
        let mut m = format!(
            "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*{}\r\n",
            keys.len()
        );
        for k in keys {
            m.push_str(&format!("${}\r\n{k}\r\n", k.len()));
        }
        m
    };
    assert!(text(cmd_reply(
        &mut c,
        &["CLIENT", "TRACKING", "ON", "REDIRECT", "999999"]
    ))
    .contains("does not exist"));
    // RESP2 with REDIRECT: invalidations arrive as messages on __redis__:invalidate.
    c.cmd(
        &["CLIENT", "TRACKING", "ON", "REDIRECT", &id, "NOLOOP"],
        "+OK\r\n",
    );
    c.cmd(&["CLIENT", "GETREDIR"], &format!(":{id}\r\n"));
    c.cmd(&["MGET", "a", "b"], "*2\r\n$-1\r\n$-1\r\n");
    // NOLOOP: this connection's own write to a is not reported.
    c.cmd(&["SET", "a", "1"], "+OK\r\n");
    query::<()>(&mut w, &["SET", "b", "1"]);
    assert_eq!(text(read_reply(&mut sink)), message(&["b"]));
    // BCAST with prefixes: one message per prefix; keys outside them are not reported.
    c.cmd(
        &[
            "CLIENT", "TRACKING", "ON", "BCAST", "REDIRECT", &id, "PREFIX", "x:", "PREFIX", "y:",
        ],
        "+OK\r\n",
    );
    assert!(text(cmd_reply(
        &mut c,
        &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "x:1"]
    ))
    .contains("overlaps with an existing prefix"));
    query::<()>(&mut w, &["MSET", "x:1", "1", "z:1", "1"]);
    assert_eq!(text(read_reply(&mut sink)), message(&["x:1"]));
    let info = text(cmd_reply(&mut c, &["CLIENT", "TRACKINGINFO"]));
    assert!(
        info.contains("bcast") && !info.contains("noloop") && info.contains("x:"),
        "{info}"
    );
    // OPTIN: only reads after CLIENT CACHING YES are tracked.
    c.cmd(&["CLIENT", "TRACKING", "OFF"], "+OK\r\n");
    c.cmd(
        &["CLIENT", "TRACKING", "ON", "OPTIN", "REDIRECT", &id],
        "+OK\r\n",
    );
    c.cmd(&["GET", "untracked"], "$-1\r\n");
    c.cmd(&["CLIENT", "CACHING", "YES"], "+OK\r\n");
    c.cmd(&["GET", "tracked"], "$-1\r\n");
    query::<()>(&mut w, &["SET", "untracked", "1"]);
    query::<()>(&mut w, &["SET", "tracked", "1"]);
    assert_eq!(text(read_reply(&mut sink)), message(&["tracked"]));
    let e = text(cmd_reply(&mut c, &["CLIENT", "CACHING", "NO"]));
    assert!(e.contains("OPTOUT"), "{e}");
    // Expired keys are invalidated too (active expiry, within about 100 ms).
    c.cmd(
        &["CLIENT", "TRACKING", "ON", "BCAST", "REDIRECT", &id],
        "+OK\r\n",
    );
    query::<()>(&mut w, &["SET", "short", "1", "PX", "1"]);
    assert_eq!(text(read_reply(&mut sink)), message(&["short"]));
    assert_eq!(text(read_reply(&mut sink)), message(&["short"]));
    let stats: String = query(&mut w, &["INFO", "clients"]);
    assert!(stats.contains("tracking_clients:1"), "{stats}");
}

fn cmd_reply(c: &mut Raw, args: &[&str]) -> Vec<u8> {
    c.send(&resp(args));
    read_reply(c)
}

/// RESP2 has no pushes: a client that tracks its own reads without REDIRECT, and is not
/// subscribed, gets no invalidation messages mixed into its replies (as in Redis).
#[test]
fn resp2_tracking_without_redirect_sends_nothing_unasked() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(t.path(), &[]);
    let mut c = srv.raw();
    c.cmd(&["CLIENT", "TRACKING", "on"], "+OK\r\n");
    c.cmd(&["GET", "foo"], "$-1\r\n");
    query::<()>(&mut srv.client(), &["SET", "foo", "bar"]);
    c.cmd(&["PING"], "+PONG\r\n");
    // Subscribed (to anything), it gets them as messages, and CLIENT LIST counts what it holds.
    c.send(&resp(&["SUBSCRIBE", "__redis__:invalidate", "other"]));
    read_reply(&mut c);
    read_reply(&mut c);
    let list: String = query(&mut srv.client(), &["CLIENT", "LIST"]);
    assert!(list.contains(" sub=2 psub=0 ssub=0 "), "{list}");
    c.cmd(&["PING"], "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
}

/// Once the last tracking client stops, no key it read stays in the table.
#[test]
fn the_table_empties_when_nobody_tracks() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(t.path(), &[]);
    let mut c = srv.raw();
    c.cmd(&["CLIENT", "TRACKING", "on"], "+OK\r\n");
    c.cmd(&["GET", "k1"], "$-1\r\n");
    c.cmd(&["CLIENT", "TRACKING", "off"], "+OK\r\n");
    c.cmd(&["CLIENT", "TRACKING", "on"], "+OK\r\n");
    c.cmd(&["GET", "k2"], "$-1\r\n");
    let info: String = query(&mut srv.client(), &["INFO", "stats"]);
    assert!(info.contains("tracking_total_items:1\r\n"), "{info}");
    assert!(info.contains("tracking_total_keys:1\r\n"), "{info}");
}

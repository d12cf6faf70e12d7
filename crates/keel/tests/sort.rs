//! SORT and SORT_RO through `keel serve`, driven by the `redis` crate.

mod common;
use common::*;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn sort_orders_by_elements_or_other_keys_and_stores_a_list() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("data");
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    query::<i64>(&mut c, &["RPUSH", "ids", "3", "1", "10", "2"]);
    assert_eq!(
        query::<Vec<String>>(&mut c, &["SORT", "ids"]),
        strings(&["1", "2", "3", "10"])
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["SORT", "ids", "ALPHA", "DESC", "LIMIT", "0", "2"]),
        strings(&["3", "2"])
    );
    // BY another key's value, GET other keys' values, a hash's field and the element itself.
    for (id, w) in [("1", "40"), ("2", "30"), ("3", "20"), ("10", "10")] {
        query::<()>(&mut c, &["SET", &format!("w_{id}"), w]);
        query::<i64>(
            &mut c,
            &["HSET", &format!("user:{id}"), "name", &format!("n{id}")],
        );
    }
    assert_eq!(
        query::<Vec<Option<String>>>(
            &mut c,
            &[
                "SORT",
                "ids",
                "BY",
                "w_*",
                "GET",
                "#",
                "GET",
                "user:*->name",
                "GET",
                "none_*"
            ]
        ),
        vec![
            Some("10".into()),
            Some("n10".into()),
            None,
            Some("3".into()),
            Some("n3".into()),
            None,
            Some("2".into()),
            Some("n2".into()),
            None,
            Some("1".into()),
            Some("n1".into()),
            None,
        ]
    );
    // BY a pattern without *: the list's own order.
    assert_eq!(
        query::<Vec<String>>(&mut c, &["SORT_RO", "ids", "BY", "nosort"]),
        strings(&["3", "1", "10", "2"])
    );
    // STORE makes a list, durable; an empty result deletes the destination.
    assert_eq!(query::<i64>(&mut c, &["SORT", "ids", "STORE", "sorted"]), 4);
    assert_eq!(
        query::<i64>(&mut c, &["SORT", "missing", "STORE", "sorted2"]),
        0
    );
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "sorted2"]), 0);
    query::<i64>(&mut c, &["SADD", "words", "b", "a"]);
    assert!(error(&mut c, &["SORT", "words"]).contains("can't be converted into double"));
    assert!(error(&mut c, &["SORT_RO", "ids", "STORE", "x"]).contains("syntax"));
    query::<()>(&mut c, &["SET", "str", "x"]);
    assert!(error(&mut c, &["SORT", "str"]).contains("WRONGTYPE"));
    drop(c);
    srv.kill9();
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    assert_eq!(
        query::<Vec<String>>(&mut c, &["LRANGE", "sorted", "0", "-1"]),
        strings(&["1", "2", "3", "10"])
    );
}

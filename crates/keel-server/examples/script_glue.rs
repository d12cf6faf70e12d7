//! What running a script costs keel besides its commands: `Scripts::run` of two scripts with a
//! caller that answers every `redis.call` at once, so that only the Lua glue is timed (the
//! KEYS and ARGV tables, `redis.call` and `redis.pcall`, the run's bookkeeping).
//!
//! ```sh
//! cargo run --release -p keel-server --example script_glue
//! ```

use std::time::Instant;

use bytes::Bytes;
use keel_server::resp::Reply;
use keel_server::scripting::{Caller, Scripts};

/// Answers every call with 1, and says it wrote (as the benchmark's script does).
struct AtOnce;

impl Caller for AtOnce {
    fn call(&mut self, _: Vec<Bytes>) -> Reply {
        Reply::Int(1)
    }
    fn wrote(&self) -> bool {
        true
    }
}

fn main() {
    let scripts = Scripts::new();
    let runs = 200_000;
    println!("| script | ns per run (3 rounds of {runs}) |");
    println!("|---|---|");
    for body in [
        "return 1",
        "redis.call('incr', KEYS[1]); return redis.call('lpush', KEYS[2], ARGV[1])",
    ] {
        let sha = scripts.load(body.as_bytes()).expect("the script compiles");
        let command: Vec<Bytes> = [
            "EVALSHA",
            &sha,
            "2",
            "counter:000000001234",
            "list:000000001234",
            "v",
        ]
        .iter()
        .map(|x| Bytes::from(x.to_string()))
        .collect();
        let rounds: Vec<String> = (0..3)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..runs {
                    let reply = scripts.run(&sha, &command, &mut AtOnce);
                    assert_eq!(reply, Reply::Int(1));
                }
                format!("{:.0}", t.elapsed().as_nanos() as f64 / runs as f64)
            })
            .collect();
        println!("| `{body}` | {} |", rounds.join(", "));
    }
}

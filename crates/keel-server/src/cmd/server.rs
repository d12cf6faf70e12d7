//! Server commands: introspection, settings, checkpoints, backups, maintenance and the
//! cluster. The connection runs them (`crate::server`), except TIME and the flushes.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keel_engine::Write;

use super::*;
use crate::docs::doc;

pub const COMMANDS: &[Command] = &[
    Command::new("command", -1, CONN, NO_KEYS)
        .redis("loading stale", "@connection")
        .doc("server", "", "Describes the commands keel serves.")
        .subcommands(COMMAND_SUBCOMMANDS),
    Command::new("info", -1, CONN, NO_KEYS)
        .redis("loading stale", "@dangerous")
        .doc(
            "server",
            "[section [section ...]]",
            "Reports server, client, persistence (durable LSN, fsyncs, group commit), stats, keyspace and keel sections.",
        ),
    Command::new("time", 1, CONN, NO_KEYS)
        .redis("loading stale fast", "")
        .doc("server", "", "Returns the server's clock as seconds and microseconds.")
        .local(|_| {
            let d = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Reply::Array(vec![
                Reply::bulk(d.as_secs().to_string()),
                Reply::bulk(d.subsec_micros().to_string()),
            ])
        }),
    Command::new("config", -2, ADMIN, NO_KEYS)
        .redis("", "")
        .doc("server", "", "Reads and changes keel's parameters.")
        .subcommands(CONFIG_SUBCOMMANDS)
        .queued_in_multi(),
    Command::new("shutdown", -1, ADMIN, NO_KEYS)
        .redis("admin noscript loading stale no_multi allow_busy", "")
        .doc(
            "server",
            "[NOSAVE|SAVE] [NOW] [FORCE] [ABORT]",
            "Stops accepting connections, answers what is in flight, syncs the log and exits.",
        )
        .no_multi(),
    Command::new("slowlog", -2, ADMIN, NO_KEYS)
        .redis("", "")
        .doc(
            "server",
            "",
            "The commands that took at least slowlog-log-slower-than µs, to their reply (for a write: durable).",
        )
        .subcommands(SLOWLOG_SUBCOMMANDS),
    Command::new("latency", -2, ADMIN, NO_KEYS)
        .redis("", "")
        .doc(
            "server",
            "",
            "The latency monitor (commands, WAL syncs and checkpoints over latency-monitor-threshold ms) and per-command latency histograms.",
        )
        .subcommands(LATENCY_SUBCOMMANDS),
    Command::new("dbsize", 1, R, NO_KEYS)
        .redis("readonly fast", "@keyspace")
        .doc("server", "", "Returns the number of keys."),
    Command::new("flushdb", -1, ADMIN_W, NO_KEYS)
        .redis("write", "@keyspace @dangerous")
        .doc("server", "[ASYNC|SYNC]", "Deletes every key, durably, in one log record.")
        .data(flush),
    Command::new("flushall", -1, ADMIN_W, NO_KEYS)
        .redis("write", "@keyspace @dangerous")
        .doc("server", "[ASYNC|SYNC]", "Deletes every key, durably, in one log record.")
        .data(flush),
    Command::new("waitaof", 4, CONN, NO_KEYS)
        .redis("noscript", "@connection")
        .doc(
            "generic",
            "numlocal numreplicas timeout",
            "Returns once earlier writes are on disk; in keel they already are when acknowledged.",
        ),
    Command::new("wait", 3, CONN, NO_KEYS)
        .redis("", "@connection")
        .doc(
            "generic",
            "numreplicas timeout",
            "Returns 0 at once: keel serve has no Redis-style replicas.",
        ),
    Command::new("save", 1, ADMIN, NO_KEYS)
        .redis("admin noscript no_async_loading no_multi", "")
        .doc(
            "server",
            "",
            "Writes a checkpoint (snapshot and manifest) and prunes the log behind it.",
        )
        .no_multi(),
    // [SCHEDULE] is accepted and ignored.
    Command::new("bgsave", -1, ADMIN, NO_KEYS)
        .redis("admin noscript no_async_loading", "")
        .doc(
            "server",
            "[SCHEDULE]",
            "Starts a checkpoint in the background.",
        ),
    Command::new("lastsave", 1, CONN, NO_KEYS)
        .redis("loading stale fast", "@admin @dangerous")
        .doc(
            "server",
            "",
            "Returns the Unix time in seconds of the last checkpoint.",
        ),
    // Most subcommands need admin; WHOAMI, CAT, GENPASS and HELP need nothing, as in Redis
    // (see `flags`).
    Command::new("acl", -2, ADMIN.with(VARIES), NO_KEYS)
        .redis("", "")
        .doc(
            "server",
            "",
            "Shows keel's users and permissions in Redis's ACL terms, read-only (they come from the config file), and the log of denied commands and failed logins.",
        )
        .subcommands(ACL_SUBCOMMANDS),
    Command::new("keel.backup", 2, ADMIN, NO_KEYS)
        .redis("admin noscript", "")
        .doc(
            "server",
            "directory",
            "Copies a consistent backup into a directory on the server and returns its LSN.",
        ),
    Command::new("memory", -2, R, NO_KEYS)
        .redis("", "")
        .doc("server", "", "Reports memory use.")
        .subcommands(MEMORY_SUBCOMMANDS),
    Command::new("keel.cluster", -2, ADMIN, NO_KEYS)
        .redis("admin noscript", "")
        .doc(
            "cluster",
            "",
            "Manages a keel cluster (a node started with --node-id).",
        )
        .subcommands(KEEL_CLUSTER_SUBCOMMANDS),
    // keel loads no modules: LIST answers truthfully (none), so that dashboards and client
    // libraries that ask which modules a server has work, and LOAD is refused.
    Command::new("module", -2, ADMIN.with(VARIES), NO_KEYS)
        .redis("", "")
        .doc(
            "server",
            "",
            "Lists loaded modules (keel loads none); LOAD, LOADEX and UNLOAD are refused.",
        )
        .subcommands(MODULE_SUBCOMMANDS),
    Command::new("keel.maintenance", -2, ADMIN, NO_KEYS)
        .redis("admin noscript", "")
        .doc(
            "server",
            "",
            "Maintenance mode: while on, writes are refused and reads go on. Durable and replicated.",
        )
        .subcommands(KEEL_MAINTENANCE_SUBCOMMANDS),
];

const MODULE_SUBCOMMANDS: &[Doc] = &[
    doc(
        "list",
        "server",
        "",
        "Returns the loaded modules: always an empty list, as keel loads none.",
    )
    .redis("admin noscript", "@admin @dangerous"),
    doc(
        "load",
        "server",
        "path [arg [arg ...]]",
        "Refused: keel cannot load Redis modules (they are C code written against Redis's internals).",
    )
    .redis("admin noscript no_async_loading", "@admin @dangerous"),
    doc(
        "loadex",
        "server",
        "path [CONFIG name value] [ARGS arg [arg ...]]",
        "Refused, as LOAD is.",
    )
    .redis("admin noscript no_async_loading", "@admin @dangerous"),
    doc(
        "unload",
        "server",
        "name",
        "Refused: no module is loaded.",
    )
    .redis("admin noscript no_async_loading", "@admin @dangerous"),
    doc("help", "server", "", "Lists the subcommands.").redis("loading stale", ""),
];

const MEMORY_SUBCOMMANDS: &[Doc] = &[
    doc(
        "usage",
        "server",
        "key [SAMPLES count]",
        "Returns about how many bytes a key and its value take (SAMPLES is accepted; keel counts every element).",
    )
    .redis("readonly", "")
    .key_specs(&[Keys::at(2, "RO")]),
    doc(
        "purge",
        "server",
        "",
        "Makes the allocator give the memory it holds freed back to the system.",
    )
    .redis("", ""),
    doc("help", "server", "", "Lists the subcommands.")
    .redis("loading stale", ""),
];

fn flush(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    if a.len() > 2 || (a.len() == 2 && !eq(&a[1], "sync") && !eq(&a[1], "async")) {
        return Err(Reply::err(SYNTAX));
    }
    Ok(Part::new(vec![Write::DeleteAll], |_| Reply::ok()))
}

const COMMAND_SUBCOMMANDS: &[Doc] = &[
    doc(
        "count",
        "server",
        "",
        "Returns how many commands keel serves.",
    )
    .redis("loading stale", "@connection"),
    doc(
        "docs",
        "server",
        "[command-name [command-name ...]]",
        "Returns the summary, group and arguments of the named commands, or of all.",
    )
    .redis("loading stale", "@connection"),
    doc(
        "getkeys",
        "server",
        "command [arg [arg ...]]",
        "Returns the keys a command would use with the arguments.",
    )
    .redis("loading stale", "@connection"),
    doc(
        "getkeysandflags",
        "server",
        "command [arg [arg ...]]",
        "Returns the keys a command would use with the arguments, and what it would do to each.",
    )
    .redis("loading stale", "@connection"),
    doc(
        "info",
        "server",
        "[command-name [command-name ...]]",
        "Returns the arity, flags, key positions, ACL categories, key specs and subcommands of the named commands, or of all.",
    )
    .redis("loading stale", "@connection"),
    doc(
        "list",
        "server",
        "[FILTERBY <MODULE module-name|ACLCAT category|PATTERN pattern>]",
        "Returns the names of all commands and subcommands, or of those in an ACL category or matching a pattern.",
    )
    .redis("loading stale", "@connection"),
    doc("help", "server", "", "Lists the subcommands.")
    .redis("loading stale", "@connection"),
];

const CONFIG_SUBCOMMANDS: &[Doc] = &[
    doc(
        "get",
        "server",
        "parameter [parameter ...]",
        "Returns every parameter whose name matches one of the glob patterns, with its value.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "set",
        "server",
        "parameter value [parameter value ...]",
        "Changes parameters that can change at run time, until restart; all or none.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "resetstat",
        "server",
        "",
        "Starts INFO's counters (stats, commandstats, errorstats) again from 0.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "rewrite",
        "server",
        "",
        "Refused: keel does not rewrite its config file.",
    )
    .redis("admin noscript loading stale", ""),
    doc("help", "server", "", "Lists the subcommands.").redis("loading stale", ""),
];

const SLOWLOG_SUBCOMMANDS: &[Doc] = &[
    doc(
        "get",
        "server",
        "[count]",
        "Returns the newest entries (10, or count; -1 for all): id, Unix time, µs, arguments, client address and name.",
    )
    .redis("admin loading stale", ""),
    doc("len", "server", "", "Returns how many entries the slow log holds.")
        .redis("admin loading stale", ""),
    doc("reset", "server", "", "Empties the slow log.").redis("admin loading stale", ""),
    doc("help", "server", "", "Lists the subcommands.").redis("loading stale", ""),
];

const LATENCY_SUBCOMMANDS: &[Doc] = &[
    doc(
        "latest",
        "server",
        "",
        "Returns each event's name, Unix time and ms of its latest sample, and its largest.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "history",
        "server",
        "event",
        "Returns an event's samples (Unix time, ms), oldest first: the last 160, one a second at most.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "reset",
        "server",
        "[event [event ...]]",
        "Forgets the named events, or all; returns how many there were.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "doctor",
        "server",
        "",
        "Describes the events recorded, in words, with what to look at.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "graph",
        "server",
        "event",
        "Draws an event's samples as a text graph.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "histogram",
        "server",
        "[command [command ...]]",
        "Returns each command's calls and the count under each power-of-two µs bound (all commands that ran, or the named ones).",
    )
    .redis("admin noscript loading stale", ""),
    doc("help", "server", "", "Lists the subcommands.").redis("loading stale", ""),
];

const KEEL_CLUSTER_SUBCOMMANDS: &[Doc] = &[
    doc(
        "init",
        "cluster",
        "",
        "Makes this node and its peers a new cluster.",
    )
    .redis("admin noscript", ""),
    doc(
        "add-node",
        "cluster",
        "raft-address",
        "Adds the node at a raft address, first as a learner, then as a voter.",
    )
    .redis("admin noscript", ""),
    doc(
        "remove-node",
        "cluster",
        "node-id",
        "Removes a node from the cluster.",
    )
    .redis("admin noscript", ""),
    doc(
        "status",
        "cluster",
        "",
        "Describes the cluster as this node sees it.",
    )
    .redis("admin noscript", ""),
    doc("help", "cluster", "", "Lists the subcommands.").redis("loading stale", ""),
];

const KEEL_MAINTENANCE_SUBCOMMANDS: &[Doc] = &[
    doc(
        "on",
        "server",
        "[reason]",
        "Turns maintenance mode on; every write then gets -MAINTENANCE with the reason.",
    )
    .redis("admin noscript", ""),
    doc("off", "server", "", "Turns maintenance mode off.").redis("admin noscript", ""),
    doc(
        "status",
        "server",
        "",
        "Returns whether maintenance mode is on, its reason and since when (Unix ms).",
    )
    .redis("admin noscript", ""),
    doc("help", "server", "", "Lists the subcommands.").redis("loading stale", ""),
];

/// ACL's subcommands. Redis's facts: WHOAMI, CAT and GENPASS are `noscript loading stale`
/// (@slow), HELP `loading stale`; every other one is `admin noscript loading stale`.
const ACL_SUBCOMMANDS: &[Doc] = &[
    doc(
        "whoami",
        "server",
        "",
        "Returns the name of the connection's user.",
    )
    .redis("noscript loading stale", ""),
    doc(
        "users",
        "server",
        "",
        "Returns the names of the users, sorted (the default user always, as in Redis).",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "list",
        "server",
        "",
        "Describes each user in one line of Redis's ACL rules: its permissions as categories (read: +@read, write: +@write, admin: +@admin +@dangerous) and the commands keel decides otherwise, its password as #<sha256>.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "getuser",
        "server",
        "username",
        "Describes a user as Redis 7.2 does: flags, password hashes, commands, keys, channels and selectors; nil for no such user.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "cat",
        "server",
        "[category]",
        "Returns the ACL categories, or the commands and subcommands in one.",
    )
    .redis("noscript loading stale", ""),
    doc(
        "dryrun",
        "server",
        "username command [arg [arg ...]]",
        "Returns OK if the user may run the command with these arguments, or why not; runs nothing.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "log",
        "server",
        "[count|RESET]",
        "Returns the latest denied commands and failed logins (10, or count), newest first, or empties the log; never a password.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "genpass",
        "server",
        "[bits]",
        "Returns a random password of 256 bits, or bits, as hexadecimal digits.",
    )
    .redis("noscript loading stale", ""),
    doc(
        "setuser",
        "server",
        "username [rule [rule ...]]",
        "Refused: keel's users come from its config file.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "deluser",
        "server",
        "username [username ...]",
        "Refused: keel's users come from its config file.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "save",
        "server",
        "",
        "Refused: keel's users come from its config file.",
    )
    .redis("admin noscript loading stale", ""),
    doc(
        "load",
        "server",
        "",
        "Refused: keel's users come from its config file.",
    )
    .redis("admin noscript loading stale", ""),
    doc("help", "server", "", "Lists the subcommands.").redis("loading stale", ""),
];

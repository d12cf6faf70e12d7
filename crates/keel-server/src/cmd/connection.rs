//! Connection and transaction commands. The connection runs them (`crate::server`): they read
//! or change the session's state, not the data, except PING and ECHO, which answer from their
//! arguments.

use super::*;
use crate::docs::doc;

pub const COMMANDS: &[Command] = &[
    Command::new("ping", -1, CONN, NO_KEYS)
        .redis("fast", "@connection")
        .doc("connection", "[message]", "Replies PONG, or the message if one is given.")
        .local(|a| match a.len() {
            1 => Reply::Simple("PONG".into()),
            2 => Reply::Bulk(a[1].clone()),
            _ => wrong_args("ping"),
        }),
    Command::new("echo", 2, CONN, NO_KEYS)
        .redis("loading stale fast", "@connection")
        .doc("connection", "message", "Replies with the message.")
        .local(|a| Reply::Bulk(a[1].clone())),
    Command::new("hello", -1, CONN, NO_KEYS)
        .redis("noscript loading stale fast no_auth allow_busy", "@connection")
        .doc(
            "connection",
            "[protover [AUTH username password] [SETNAME clientname]]",
            "Chooses RESP2 or RESP3, optionally authenticates and names the connection, and describes the server.",
        )
        .before_auth(),
    Command::new("auth", -2, CONN, NO_KEYS)
        .redis("noscript loading stale fast no_auth allow_busy", "@connection")
        .doc(
            "connection",
            "[username] password",
            "Authenticates the connection as a user (the default user if none is named).",
        )
        .before_auth(),
    Command::new("select", 2, CONN, NO_KEYS)
        .redis("loading stale fast", "@connection")
        .doc(
            "connection",
            "index",
            "Selects the database; keel has only database 0.",
        ),
    Command::new("quit", -1, CONN, NO_KEYS)
        .redis("noscript loading stale fast no_auth allow_busy", "@connection")
        .doc("connection", "", "Closes the connection after the reply.")
        .before_auth()
        .runs_in_multi(),
    Command::new("reset", 1, CONN, NO_KEYS)
        .redis("noscript loading stale fast no_auth allow_busy", "@connection")
        .doc(
            "connection",
            "",
            "Ends any transaction, forgets watched keys, returns to RESP2 and to the initial user.",
        )
        .runs_in_multi(),
    Command::new("client", -2, ADMIN.with(VARIES), NO_KEYS)
        .redis("", "")
        .doc(
            "connection",
            "",
            "Inspects or names the connection; lists, kills and pauses clients (those need admin).",
        )
        .subcommands(CLIENT_SUBCOMMANDS)
        .queued_in_multi(),
    Command::new("monitor", 1, ADMIN, NO_KEYS)
        .redis("admin noscript loading stale", "")
        .doc(
            "server",
            "",
            "Streams every command clients run, one line each, until QUIT or RESET; passwords are redacted.",
        )
        .no_multi(),
    Command::new("multi", 1, CONN, NO_KEYS)
        .redis("noscript loading stale fast allow_busy", "@transaction")
        .doc("transactions", "", "Starts a transaction: later commands are queued.")
        .runs_in_multi(),
    // Each queued command was checked as it was queued.
    Command::new("exec", 1, CONN, NO_KEYS)
        .redis("noscript loading stale skip_slowlog", "@transaction")
        .doc(
            "transactions",
            "",
            "Runs the queued commands as one atomic log record, unless a watched key changed.",
        )
        .runs_in_multi(),
    Command::new("discard", 1, CONN, NO_KEYS)
        .redis("noscript loading stale fast allow_busy", "@transaction")
        .doc("transactions", "", "Drops the queued commands and the watched keys.")
        .runs_in_multi(),
    // Reads the keys' versions (Redis: an RO key spec).
    Command::new("watch", -2, R, ALL_KEYS)
        .redis("noscript loading stale fast allow_busy", "@transaction")
        .key_flags("RO")
        .doc(
            "transactions",
            "key [key ...]",
            "Makes the next EXEC fail if any of the keys changes before it.",
        )
        .runs_in_multi(),
    Command::new("unwatch", 1, CONN, NO_KEYS)
        .redis("noscript loading stale fast allow_busy", "@transaction")
        .doc("transactions", "", "Forgets the watched keys."),
];

const CLIENT_SUBCOMMANDS: &[Doc] = &[
    doc(
        "id",
        "connection",
        "",
        "Returns the connection's unique id.",
    )
    .redis("noscript loading stale", "@connection"),
    doc(
        "getname",
        "connection",
        "",
        "Returns the connection's name, or nil.",
    )
    .redis("noscript loading stale", "@connection"),
    doc(
        "setname",
        "connection",
        "connection-name",
        "Names the connection.",
    )
    .redis("noscript loading stale", "@connection"),
    doc(
        "setinfo",
        "connection",
        "<LIB-NAME libname|LIB-VER libver>",
        "Records the client library's name or version; CLIENT LIST shows them.",
    )
    .redis("noscript loading stale", "@connection"),
    doc(
        "info",
        "connection",
        "",
        "Describes the connection in one line, as CLIENT LIST does.",
    )
    .redis("noscript loading stale", "@connection"),
    doc(
        "list",
        "connection",
        "[TYPE <NORMAL|MASTER|REPLICA|PUBSUB>] [ID client-id [client-id ...]]",
        "Describes every connection, one line each.",
    )
    .redis("admin noscript loading stale", "@connection"),
    doc(
        "kill",
        "connection",
        "[ID client-id] [TYPE <NORMAL|MASTER|SLAVE|REPLICA|PUBSUB>] [USER username] [ADDR addr] [LADDR laddr] [SKIPME <YES|NO>] [MAXAGE maxage]",
        "Closes the connections the filters match (not this one unless SKIPME NO) and returns how many; CLIENT KILL addr closes one.",
    )
    .redis("admin noscript loading stale", "@connection"),
    doc(
        "reply",
        "connection",
        "<ON|OFF|SKIP>",
        "Turns this connection's replies off, on, or off for the next command.",
    )
    .redis("noscript loading stale", "@connection"),
    doc(
        "pause",
        "connection",
        "timeout [WRITE|ALL]",
        "Holds every client's commands (or only writes) for timeout ms; CLIENT is never held.",
    )
    .redis("admin noscript loading stale", "@connection"),
    doc(
        "unpause",
        "connection",
        "",
        "Ends CLIENT PAUSE.",
    )
    .redis("admin noscript loading stale", "@connection"),
    doc(
        "no-evict",
        "connection",
        "<ON|OFF>",
        "Accepted and shown in CLIENT LIST; keel evicts nothing.",
    )
    .redis("admin noscript loading stale", "@connection"),
    doc(
        "no-touch",
        "connection",
        "<ON|OFF>",
        "Accepted and shown in CLIENT LIST; keel keeps no access times.",
    )
    .redis("noscript loading stale", "@connection"),
    doc(
        "getredir",
        "connection",
        "",
        "Returns the client tracking invalidations go to: its id, 0 for this one, -1 when not tracking.",
    )
    .redis("noscript loading stale", "@connection"),
    doc(
        "tracking",
        "connection",
        "<ON|OFF> [REDIRECT client-id] [PREFIX prefix] [BCAST] [OPTIN] [OPTOUT] [NOLOOP]",
        "Client-side caching: invalidations of the keys this connection read (or, with BCAST, of every key with a prefix; PREFIX may repeat), sent once the write is durable.",
    )
    .redis("noscript loading stale", "@connection"),
    doc(
        "caching",
        "connection",
        "<YES|NO>",
        "With OPTIN or OPTOUT: whether the next command's reads are tracked.",
    )
    .redis("noscript loading stale", "@connection"),
    doc(
        "trackinginfo",
        "connection",
        "",
        "Returns this connection's tracking: flags, redirect and prefixes.",
    )
    .redis("noscript loading stale", "@connection"),
    doc("help", "connection", "", "Lists the subcommands.").redis("loading stale", "@connection"),
];

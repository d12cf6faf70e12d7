//! Scripts: EVAL, EVALSHA, their read-only forms and SCRIPT. The connection runs them
//! (`crate::server`'s scripts module, on [`crate::scripting`]). EVAL needs no permission of
//! its own (EVAL_RO: read); each command a script calls is checked as it would be alone.

use super::*;
use crate::docs::doc;

pub const COMMANDS: &[Command] = &[
    Command::new("eval", -3, CONN, NO_KEYS)
        .redis(
            "noscript skip_monitor may_replicate no_mandatory_keys stale",
            "@scripting",
        )
        .key_specs(&[Keys::keynum(2, "RW access update")])
        .doc(
            "scripting",
            "script numkeys [key [key ...]] [arg [arg ...]]",
            "Runs a Lua script as one transaction: its writes are logged as one record, and its reply leaves once that record is durable.",
        )
        .queued_in_multi(),
    Command::new("evalsha", -3, CONN, NO_KEYS)
        .redis(
            "noscript skip_monitor may_replicate no_mandatory_keys stale",
            "@scripting",
        )
        .key_specs(&[Keys::keynum(2, "RW access update")])
        .doc(
            "scripting",
            "sha1 numkeys [key [key ...]] [arg [arg ...]]",
            "Runs a script loaded before (by EVAL or SCRIPT LOAD), by its SHA-1.",
        )
        .queued_in_multi(),
    Command::new("eval_ro", -3, R, NO_KEYS)
        .redis(
            "readonly noscript skip_monitor no_mandatory_keys stale",
            "@scripting",
        )
        .key_specs(&[Keys::keynum(2, "RO access")])
        .doc(
            "scripting",
            "script numkeys [key [key ...]] [arg [arg ...]]",
            "Runs a Lua script that may only read.",
        )
        .queued_in_multi(),
    Command::new("evalsha_ro", -3, R, NO_KEYS)
        .redis(
            "readonly noscript skip_monitor no_mandatory_keys stale",
            "@scripting",
        )
        .key_specs(&[Keys::keynum(2, "RO access")])
        .doc(
            "scripting",
            "sha1 numkeys [key [key ...]] [arg [arg ...]]",
            "Runs a loaded script that may only read, by its SHA-1.",
        )
        .queued_in_multi(),
    Command::new("fcall", -3, CONN, NO_KEYS)
        .redis(
            "noscript skip_monitor may_replicate no_mandatory_keys stale",
            "@scripting",
        )
        .key_specs(&[Keys::keynum(2, "RW access update")])
        .doc(
            "scripting",
            "function numkeys [key [key ...]] [arg [arg ...]]",
            "Runs a loaded function as one transaction, as EVAL runs a script.",
        )
        .queued_in_multi(),
    Command::new("fcall_ro", -3, R, NO_KEYS)
        .redis(
            "readonly noscript skip_monitor no_mandatory_keys stale",
            "@scripting",
        )
        .key_specs(&[Keys::keynum(2, "RO access")])
        .doc(
            "scripting",
            "function numkeys [key [key ...]] [arg [arg ...]]",
            "Runs a loaded function that may only read.",
        )
        .queued_in_multi(),
    Command::new("function", -2, ADMIN.with(VARIES), NO_KEYS)
        .redis("", "")
        .doc(
            "scripting",
            "",
            "Loads, lists, deletes, dumps and restores function libraries, kept durably (changing them needs admin).",
        )
        .subcommands(FUNCTION_SUBCOMMANDS),
    Command::new("script", -2, CONN, NO_KEYS)
        .redis("", "")
        .doc("scripting", "", "Manages the script cache.")
        .subcommands(SCRIPT_SUBCOMMANDS),
];

const SCRIPT_SUBCOMMANDS: &[Doc] = &[
    doc(
        "load",
        "scripting",
        "script",
        "Compiles a script and keeps it (not durably: the cache is empty after a restart); returns its SHA-1.",
    )
    .redis("noscript stale", "@slow @scripting"),
    doc(
        "exists",
        "scripting",
        "sha1 [sha1 ...]",
        "Returns 1 or 0 per SHA-1: whether the script is cached.",
    )
    .redis("noscript", "@slow @scripting"),
    doc(
        "flush",
        "scripting",
        "[ASYNC|SYNC]",
        "Empties the script cache.",
    )
    .redis("noscript may_replicate", "@slow @scripting"),
    doc(
        "kill",
        "scripting",
        "",
        "Stops the running script, if it has not written yet.",
    )
    .redis("noscript allow_busy", "@slow @scripting"),
    doc("help", "scripting", "", "Lists the subcommands.").redis("loading stale", "@slow @scripting"),
];

const FUNCTION_SUBCOMMANDS: &[Doc] = &[
    doc(
        "load",
        "scripting",
        "[REPLACE] function-code",
        "Loads a library (`#!lua name=…`), durably: it survives restarts, checkpoints and backups.",
    )
    .redis("write denyoom noscript", "@write @slow @scripting"),
    doc(
        "delete",
        "scripting",
        "library-name",
        "Deletes a library and its functions, durably.",
    )
    .redis("write noscript", "@write @slow @scripting"),
    doc(
        "flush",
        "scripting",
        "[ASYNC|SYNC]",
        "Deletes every library, durably.",
    )
    .redis("write noscript", "@write @slow @scripting"),
    doc(
        "list",
        "scripting",
        "[LIBRARYNAME library-name-pattern] [WITHCODE]",
        "Lists the libraries and their functions.",
    )
    .redis("noscript", "@slow @scripting"),
    doc(
        "dump",
        "scripting",
        "",
        "Returns every library in keel's own payload (see docs/FORMAT.md), for FUNCTION RESTORE.",
    )
    .redis("noscript", "@slow @scripting"),
    doc(
        "restore",
        "scripting",
        "serialized-value [FLUSH|APPEND|REPLACE]",
        "Loads the libraries of a FUNCTION DUMP payload, durably.",
    )
    .redis("write denyoom noscript", "@write @slow @scripting"),
    doc(
        "stats",
        "scripting",
        "",
        "Returns the running script or function, and how many libraries and functions are loaded.",
    )
    .redis("noscript allow_busy", "@slow @scripting"),
    doc(
        "kill",
        "scripting",
        "",
        "Stops the running function, if it has not written yet.",
    )
    .redis("noscript allow_busy", "@slow @scripting"),
    doc("help", "scripting", "", "Lists the subcommands.")
        .redis("loading stale", "@slow @scripting"),
];

//! Pub/Sub commands. The connection runs them (`crate::server`'s pubsub module). They need no
//! permission: keel's permissions cover stored data, and a message is never stored.

use super::*;
use crate::docs::doc;

const PUBSUB_FLAGS: &str = "pubsub noscript loading stale";

pub const COMMANDS: &[Command] = &[
    Command::new("subscribe", -2, CONN, NO_KEYS)
        .redis(PUBSUB_FLAGS, "")
        .doc(
            "pubsub",
            "channel [channel ...]",
            "Subscribes to channels; the messages published there then arrive on this connection.",
        ),
    Command::new("unsubscribe", -1, CONN, NO_KEYS)
        .redis(PUBSUB_FLAGS, "")
        .doc(
            "pubsub",
            "[channel [channel ...]]",
            "Unsubscribes from the channels, or from every channel.",
        ),
    Command::new("psubscribe", -2, CONN, NO_KEYS)
        .redis(PUBSUB_FLAGS, "")
        .doc(
            "pubsub",
            "pattern [pattern ...]",
            "Subscribes to every channel a glob pattern matches.",
        ),
    Command::new("punsubscribe", -1, CONN, NO_KEYS)
        .redis(PUBSUB_FLAGS, "")
        .doc(
            "pubsub",
            "[pattern [pattern ...]]",
            "Unsubscribes from the patterns, or from every pattern.",
        ),
    Command::new("ssubscribe", -2, CONN, NO_KEYS)
        .redis(PUBSUB_FLAGS, "")
        .doc(
            "pubsub",
            "shardchannel [shardchannel ...]",
            "Subscribes to shard channels (keel has one shard: they are channels of their own).",
        ),
    Command::new("sunsubscribe", -1, CONN, NO_KEYS)
        .redis(PUBSUB_FLAGS, "")
        .doc(
            "pubsub",
            "[shardchannel [shardchannel ...]]",
            "Unsubscribes from the shard channels, or from every one.",
        ),
    Command::new("publish", 3, CONN, NO_KEYS)
        .redis("pubsub loading stale fast may_replicate", "")
        .doc(
            "pubsub",
            "channel message",
            "Sends a message to the channel's subscribers (not durable) and returns how many it reached.",
        )
        .queued_in_multi(),
    Command::new("spublish", 3, CONN, NO_KEYS)
        .redis("pubsub loading stale fast may_replicate", "")
        .doc(
            "pubsub",
            "shardchannel message",
            "Sends a message to a shard channel's subscribers and returns how many it reached.",
        )
        .queued_in_multi(),
    Command::new("pubsub", -2, CONN, NO_KEYS)
        .redis("", "")
        .doc("pubsub", "", "Reports channels and subscriptions.")
        .subcommands(PUBSUB_SUBCOMMANDS)
        .queued_in_multi(),
];

const PUBSUB_SUBCOMMANDS: &[Doc] = &[
    doc(
        "channels",
        "pubsub",
        "[pattern]",
        "Returns the channels with subscribers (that match the pattern).",
    )
    .redis("pubsub loading stale", ""),
    doc(
        "numsub",
        "pubsub",
        "[channel [channel ...]]",
        "Returns each channel with its number of subscribers.",
    )
    .redis("pubsub loading stale", ""),
    doc(
        "numpat",
        "pubsub",
        "",
        "Returns the number of patterns subscribed to.",
    )
    .redis("pubsub loading stale", ""),
    doc(
        "shardchannels",
        "pubsub",
        "[pattern]",
        "Returns the shard channels with subscribers (that match the pattern).",
    )
    .redis("pubsub loading stale", ""),
    doc(
        "shardnumsub",
        "pubsub",
        "[shardchannel [shardchannel ...]]",
        "Returns each shard channel with its number of subscribers.",
    )
    .redis("pubsub loading stale", ""),
    doc("help", "pubsub", "", "Lists the subcommands.").redis("loading stale", ""),
];

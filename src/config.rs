//! Server configuration: typed limits with documented defaults.
//!
//! A [`Config`] comes from `Default`, then a TOML file, then command-line
//! options and environment variables (see `main.rs`), each overriding the one
//! before.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::{CodecLimits, Limits};

/// Everything the server can be told.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Id of this node in a multi-node routing space (high 16 bits of peer ids).
    pub node_id: u16,
    /// Most connections at once; further ones are refused with HTTP 503.
    pub max_connections: usize,
    /// Most connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Time a client has to finish the HTTP upgrade and send Hello.
    #[serde(with = "millis")]
    pub handshake_timeout: Duration,
    /// The server pings a connection it has not heard from for this long.
    #[serde(with = "millis")]
    pub heartbeat_interval: Duration,
    /// A connection silent for this long is closed and leaves its rooms.
    #[serde(with = "millis")]
    pub heartbeat_timeout: Duration,
    /// Time clients get to close after the server announces shutdown.
    #[serde(with = "millis")]
    pub shutdown_grace: Duration,
    /// Largest WebSocket message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most frames in one WebSocket message.
    pub max_frames_per_message: usize,
    /// Largest SDP (on the wire and inflated), in bytes.
    pub max_sdp_bytes: usize,
    /// Most ICE candidates in one batch.
    pub max_candidates_per_batch: usize,
    /// Sustained frames per second per client.
    pub rate_per_second: u32,
    /// Frames a client may send above the sustained rate in a burst.
    pub rate_burst: u32,
    /// Frames dropped for rate in a row before the connection is closed
    /// with a policy-violation code.
    pub rate_abuse_threshold: u32,
    /// Capacity of a mesh room created without asking for one.
    pub default_room_capacity: u32,
    /// Largest capacity a mesh room may ask for.
    pub max_room_capacity: u32,
    /// Most rooms one connection may be in at once.
    pub max_rooms_per_peer: usize,
    /// Frames waiting to be written to one client before it is cut off as
    /// a slow consumer.
    pub outbox_frames: usize,
    /// Bytes waiting to be written to one client before it is cut off.
    pub outbox_bytes: usize,
    /// Read buffer per WebSocket connection, in bytes. Socket reads go
    /// through a per-thread 64 KiB buffer, so this only bounds how much
    /// tungstenite copies per call; small keeps idle connections small.
    pub read_buffer_bytes: usize,
    /// STUN/TURN URLs handed to clients in Welcome (without credentials).
    pub ice_servers: Vec<String>,
    /// Number of routing-table shards (rounded up to a power of two).
    pub shards: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            node_id: 0,
            max_connections: 100_000,
            max_connections_per_ip: 1_000,
            handshake_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(45),
            shutdown_grace: Duration::from_secs(5),
            max_message_bytes: 128 * 1024,
            max_frames_per_message: 64,
            max_sdp_bytes: 64 * 1024,
            max_candidates_per_batch: 64,
            rate_per_second: 200,
            rate_burst: 400,
            rate_abuse_threshold: 1_000,
            default_room_capacity: 8,
            max_room_capacity: 64,
            max_rooms_per_peer: 16,
            outbox_frames: 1_024,
            outbox_bytes: 1024 * 1024,
            read_buffer_bytes: 256,
            ice_servers: vec!["stun:stun.l.google.com:19302".into()],
            shards: 64,
        }
    }
}

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// The values contradict each other.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; keys it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    /// Checks that the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return fail("heartbeat_timeout must be longer than heartbeat_interval");
        }
        if self.rate_per_second == 0 || self.rate_burst == 0 {
            return fail("rate_per_second and rate_burst must be positive");
        }
        if self.default_room_capacity < 2 || self.max_room_capacity < self.default_room_capacity {
            return fail("need 2 <= default_room_capacity <= max_room_capacity");
        }
        if self.max_message_bytes < 1024 || self.max_frames_per_message == 0 {
            return fail("max_message_bytes must be >= 1024 and max_frames_per_message > 0");
        }
        if self.outbox_frames == 0 || self.outbox_bytes < self.max_message_bytes {
            return fail("outbox_bytes must be at least max_message_bytes");
        }
        Ok(())
    }

    /// Limits for the decoder.
    pub fn codec_limits(&self) -> CodecLimits {
        CodecLimits {
            max_payload: self.max_message_bytes,
            max_frames: self.max_frames_per_message,
            max_sdp: self.max_sdp_bytes,
            max_candidates: self.max_candidates_per_batch,
        }
    }

    /// Limits as announced to clients in Welcome.
    pub fn wire_limits(&self) -> Limits {
        let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Limits {
            max_message_bytes: clamp(self.max_message_bytes),
            max_frames_per_message: clamp(self.max_frames_per_message),
            max_sdp_bytes: clamp(self.max_sdp_bytes),
            rate_per_second: self.rate_per_second,
            rate_burst: self.rate_burst,
            max_id_bytes: clamp(crate::protocol::MAX_ID_BYTES),
            max_room_capacity: self.max_room_capacity,
            default_room_capacity: self.default_room_capacity,
        }
    }
}

mod millis {
    //! Durations in TOML as integer milliseconds.
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_some_keys_and_keeps_the_rest() {
        let c: Config = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nheartbeat_interval = 1000\nheartbeat_timeout = 3000\n",
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.max_room_capacity, Config::default().max_room_capacity);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("listne = \"x\"").is_err());
    }

    #[test]
    fn contradictions_are_refused() {
        let c = Config {
            heartbeat_timeout: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(2),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}

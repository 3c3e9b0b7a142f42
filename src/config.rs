//! Server configuration: typed limits with documented defaults.
//!
//! A [`Config`] comes from `Default`, then a TOML file, then command-line
//! options and environment variables (see `main.rs`), each overriding the one
//! before.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::{CodecLimits, Limits};

/// Everything the server can be told.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Count and serve Prometheus metrics.
    pub metrics: bool,
    /// Path of the metrics endpoint.
    pub metrics_path: String,
    /// A separate address for the metrics endpoint; when set, it is served
    /// there only, not on `listen`.
    pub metrics_listen: Option<SocketAddr>,
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
    /// Sustained inbound units per second per client: each protocol frame,
    /// and each WebSocket message or control frame without one (ping, pong,
    /// text, empty, undecodable).
    pub rate_per_second: u32,
    /// Units a client may send above the sustained rate in a burst.
    pub rate_burst: u32,
    /// Sustained inbound bytes per second per client.
    pub rate_bytes_per_second: u32,
    /// Bytes a client may send above the sustained byte rate in a burst
    /// (at least `max_message_bytes`).
    pub rate_bytes_burst: u32,
    /// Units dropped for rate within one `rate_abuse_window`, with more
    /// dropped than accepted, before the connection is closed with a
    /// policy-violation code.
    pub rate_abuse_threshold: u32,
    /// The window over which dropped and accepted units are compared.
    #[serde(with = "millis")]
    pub rate_abuse_window: Duration,
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
    /// Whether clients must present an access token.
    pub auth: AuthMode,
    /// The HS256 secret access tokens are signed with. Never read from the
    /// TOML file or a plain command-line value: `main.rs` takes it from
    /// `--jwt-secret-file` or `SWITCHBOARD_JWT_SECRET`.
    #[serde(skip)]
    pub jwt_secret: Option<Secret>,
    /// Required `iss` claim, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set; tokens with an `aud` are refused
    /// without it.
    pub jwt_audience: Option<String>,
    /// `Origin` values accepted on WebSocket upgrades; empty accepts all.
    /// Upgrades without an `Origin` header (non-browser clients) are always
    /// accepted.
    pub allowed_origins: Vec<String>,
    /// PEM certificate chain; with `tls_key`, the server speaks TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// The TURN REST secret shared with coturn (`static-auth-secret`). Like
    /// `jwt_secret`, never read from TOML.
    #[serde(skip)]
    pub turn_secret: Option<Secret>,
    /// `turn:`/`turns:` URLs handed out with per-client credentials.
    pub turn_urls: Vec<String>,
    /// URLs webhook events are POSTed to; none sends none.
    pub webhook_urls: Vec<String>,
    /// The Redis shared by the nodes of a cluster (`redis://`, `rediss://`
    /// with TLS, `unix:///path`); none keeps everything in this process.
    pub redis_url: Option<String>,
    /// The cluster this node joins with `redis_url`: the prefix of its keys
    /// and channels, so several clusters can share one Redis.
    pub cluster: String,
    /// How long a node's lease in Redis lasts without renewal (renewed every
    /// third of it); a node silent for longer is taken for dead and its
    /// peers are removed by the others.
    #[serde(with = "millis")]
    pub lease: Duration,
    /// Longest wait for Redis on a client's request (a join, a login, a
    /// call by name); past it the client gets `UNAVAILABLE`.
    #[serde(with = "millis")]
    pub redis_timeout: Duration,
    /// How long a session whose connection dropped waits for its client to
    /// resume it (clients with `CAPABILITY_RESUME`); 0 turns resume off.
    #[serde(with = "millis")]
    pub resume_grace: Duration,
    /// Most frames sent to a resumable client that it has not acknowledged;
    /// past it the oldest are dropped and the session can no longer resume.
    pub replay_frames: usize,
    /// Most payload bytes of such frames.
    pub replay_bytes: usize,
    /// Longest the server waits before acknowledging a resumable client's
    /// frames (it acknowledges sooner whenever it sends anything).
    #[serde(with = "millis")]
    pub ack_delay: Duration,
    /// The key webhook requests are signed with (HMAC-SHA256). Like
    /// `jwt_secret`, never read from TOML.
    #[serde(skip)]
    pub webhook_secret: Option<Secret>,
    /// The bearer token of the admin API (`/admin/...`); the API is off
    /// without one. Like `jwt_secret`, never read from TOML.
    #[serde(skip)]
    pub admin_token: Option<Secret>,
    /// Lifetime of issued TURN credentials.
    #[serde(with = "millis")]
    pub turn_ttl: Duration,
}

/// Whether the server checks access tokens.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may connect, take any free name and join any room (local
    /// development).
    #[default]
    None,
    /// Every connection needs a valid HS256 token (see `crate::auth`).
    Token,
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<AuthMode, String> {
        match s {
            "none" => Ok(AuthMode::None),
            "token" => Ok(AuthMode::Token),
            other => Err(format!(
                "unknown auth mode {other:?}: expected none or token"
            )),
        }
    }
}

/// Secret bytes whose `Debug` does not print them, since `Debug` output of
/// the configuration ends up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            metrics: true,
            metrics_path: "/metrics".into(),
            metrics_listen: None,
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
            rate_bytes_per_second: 256 * 1024,
            rate_bytes_burst: 1024 * 1024,
            rate_abuse_threshold: 1_000,
            rate_abuse_window: Duration::from_secs(10),
            default_room_capacity: 8,
            max_room_capacity: 64,
            max_rooms_per_peer: 16,
            outbox_frames: 1_024,
            outbox_bytes: 1024 * 1024,
            read_buffer_bytes: 256,
            ice_servers: vec!["stun:stun.l.google.com:19302".into()],
            shards: 64,
            auth: AuthMode::None,
            jwt_secret: None,
            jwt_issuer: None,
            jwt_audience: None,
            allowed_origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
            turn_secret: None,
            turn_urls: Vec::new(),
            admin_token: None,
            webhook_urls: Vec::new(),
            redis_url: None,
            cluster: "switchboard".into(),
            lease: Duration::from_secs(3),
            redis_timeout: Duration::from_secs(1),
            resume_grace: Duration::from_secs(30),
            replay_frames: 256,
            replay_bytes: 256 * 1024,
            ack_delay: Duration::from_millis(200),
            webhook_secret: None,
            turn_ttl: crate::turn::DEFAULT_TTL,
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
        if !self.metrics_path.starts_with('/')
            || ["/ws", "/healthz", "/readyz"].contains(&self.metrics_path.as_str())
            || self.metrics_path.starts_with("/compat/")
        {
            return fail("metrics_path must start with / and not be an endpoint of its own");
        }
        if self.rate_per_second == 0 || self.rate_burst == 0 {
            return fail("rate_per_second and rate_burst must be positive");
        }
        if self.rate_bytes_per_second == 0
            || (self.rate_bytes_burst as usize) < self.max_message_bytes
        {
            return fail(
                "rate_bytes_per_second must be positive and rate_bytes_burst at least max_message_bytes",
            );
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
        if !self.webhook_urls.is_empty() {
            if self
                .webhook_secret
                .as_ref()
                .is_none_or(|s| s.expose().len() < 16)
            {
                return fail("webhook_urls need a webhook secret of at least 16 bytes");
            }
            for url in &self.webhook_urls {
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url.parse::<hyper::Uri>().is_err()
                {
                    return fail(&format!("webhook URL {url:?} is not an http(s) URL"));
                }
            }
        }
        if self
            .admin_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            return fail("the admin token must be at least 16 bytes");
        }
        if self.auth == AuthMode::Token && self.jwt_secret.is_none() {
            return fail(
                "auth = token needs a secret (--jwt-secret-file or SWITCHBOARD_JWT_SECRET)",
            );
        }
        if let Some(secret) = &self.jwt_secret {
            if secret.expose().len() < crate::auth::MIN_SECRET_BYTES {
                return fail("the JWT secret must be at least 32 bytes");
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return fail("tls_cert and tls_key go together");
        }
        if self.turn_secret.is_some() && self.turn_urls.is_empty() {
            return fail("a TURN secret needs at least one --turn-url");
        }
        if self.turn_secret.is_none() && !self.turn_urls.is_empty() {
            return fail("--turn-url needs a TURN secret (--turn-secret-file)");
        }
        if self.turn_ttl < Duration::from_secs(60) {
            return fail("turn_ttl must be at least 60 s");
        }
        Ok(())
    }

    /// The token verifier for `auth = token`, `None` for `auth = none`.
    pub fn authenticator(&self) -> Result<Option<crate::auth::Authenticator>, ConfigError> {
        if self.auth == AuthMode::None {
            return Ok(None);
        }
        let secret = self
            .jwt_secret
            .as_ref()
            .ok_or_else(|| ConfigError::Invalid("auth = token needs a secret".into()))?;
        let mut auth = crate::auth::Authenticator::new(secret.expose())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(issuer) = &self.jwt_issuer {
            auth = auth.with_issuer(issuer.clone());
        }
        if let Some(audience) = &self.jwt_audience {
            auth = auth.with_audience(audience.clone());
        }
        Ok(Some(auth))
    }

    /// The TURN credential issuer, when a TURN secret is configured.
    pub fn turn(&self) -> Option<crate::turn::TurnConfig> {
        let secret = self.turn_secret.as_ref()?;
        Some(crate::turn::TurnConfig {
            secret: secret.expose().to_vec(),
            urls: self.turn_urls.clone(),
            ttl: self.turn_ttl,
        })
    }

    /// The per-client rate rules.
    pub fn rate_policy(&self) -> crate::rate::RatePolicy {
        crate::rate::RatePolicy {
            per_second: self.rate_per_second,
            burst: self.rate_burst,
            bytes_per_second: self.rate_bytes_per_second,
            bytes_burst: self.rate_bytes_burst,
            abuse_threshold: self.rate_abuse_threshold,
            abuse_window: self.rate_abuse_window,
        }
    }

    /// The most bytes tungstenite may hold waiting for the socket: two of
    /// the largest messages (one being written, one behind it) and room for
    /// the control frames it answers by itself (pongs, the close reply).
    /// A client that stops reading fills it and is cut off.
    pub fn write_buffer_limit(&self) -> usize {
        2 * self.max_message_bytes + 64 * 1024
    }

    /// Limits for the decoder.
    pub fn codec_limits(&self) -> CodecLimits {
        CodecLimits {
            // A frame fits in one message, header included.
            max_payload: self
                .max_message_bytes
                .saturating_sub(crate::protocol::HEADER_LEN),
            max_frames: self.max_frames_per_message,
            max_sdp: self.max_sdp_bytes,
            max_candidates: self.max_candidates_per_batch,
        }
    }

    /// Session resume's limits as `Welcome` announces them; `None` with
    /// resume off.
    pub fn resume_limits(&self) -> Option<crate::protocol::ResumeLimits> {
        let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        (!self.resume_grace.is_zero()).then(|| crate::protocol::ResumeLimits {
            grace: self.resume_grace,
            replay_frames: clamp(self.replay_frames),
            replay_bytes: clamp(self.replay_bytes),
            ack_delay: self.ack_delay,
        })
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
            // The codec's per-frame bound is max_message_bytes; a frame
            // must fit in a message with its header.
            max_payload_bytes: clamp(
                self.max_message_bytes
                    .saturating_sub(crate::protocol::HEADER_LEN),
            ),
            max_candidates_per_batch: clamp(self.max_candidates_per_batch),
            rate_bytes_per_second: self.rate_bytes_per_second,
            rate_bytes_burst: self.rate_bytes_burst,
            max_rooms_per_peer: clamp(self.max_rooms_per_peer),
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
    fn security_settings_are_checked_together() {
        let token_without_secret = Config {
            auth: AuthMode::Token,
            ..Config::default()
        };
        assert!(token_without_secret.validate().is_err());
        let short_secret = Config {
            auth: AuthMode::Token,
            jwt_secret: Some(Secret::new(b"short".to_vec())),
            ..Config::default()
        };
        assert!(short_secret.validate().is_err());
        let ok = Config {
            auth: AuthMode::Token,
            jwt_secret: Some(Secret::new([7u8; 32].to_vec())),
            ..Config::default()
        };
        ok.validate().unwrap();
        assert!(ok.authenticator().unwrap().is_some());
        assert!(
            !format!("{ok:?}").contains("[7, 7"),
            "secrets stay out of Debug"
        );
        let half_tls = Config {
            tls_cert: Some("cert.pem".into()),
            ..Config::default()
        };
        assert!(half_tls.validate().is_err());
        let turn_without_urls = Config {
            turn_secret: Some(Secret::new(b"s".to_vec())),
            ..Config::default()
        };
        assert!(turn_without_urls.validate().is_err());
        let c: Config =
            toml::from_str("auth = \"token\"\nallowed_origins = [\"https://a.example\"]\n")
                .unwrap();
        assert_eq!(c.auth, AuthMode::Token);
        assert!(toml::from_str::<Config>("jwt_secret = \"x\"").is_err());
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

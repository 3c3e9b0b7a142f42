//! Time-limited TURN credentials for coturn's REST scheme.
//!
//! coturn started with `use-auth-secret` and `static-auth-secret=<secret>`
//! accepts any username of the form `<expiry unix seconds>:<identity>` whose
//! password is `base64(HMAC-SHA1(secret, username))`, until the expiry
//! passes. The signaling server and coturn share only the secret; no user
//! database is needed, and a leaked credential dies on its own.
//! (draft-uberti-behave-turn-rest-00; coturn `turnserver.conf`.)
//!
//! coturn reads the expiry from before the *first* `:`, so an identity may
//! itself contain colons.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::protocol::IceServer;

/// Lifetime of issued credentials unless configured otherwise.
///
/// coturn checks the expiry on every authenticated request, allocation
/// refreshes included, so this bounds how long a relayed call can last
/// without the client fetching new credentials.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);

/// The TURN servers a client is offered and the secret shared with them.
#[derive(Clone)]
pub struct TurnConfig {
    /// The `static-auth-secret` configured in coturn.
    pub secret: Vec<u8>,
    /// `turn:` / `turns:` URLs, e.g. `turn:turn.example.com:3478?transport=udp`.
    pub urls: Vec<String>,
    /// How long issued credentials stay valid.
    pub ttl: Duration,
}

impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is deliberately left out: Debug output ends up in logs.
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TurnConfig {
    /// Credentials for `identity`, issued at `now`, valid for `self.ttl`.
    ///
    /// `identity` only labels the allocation in coturn's logs and quotas
    /// (`user-quota`); use the user name when logged in, else the peer id.
    pub fn credentials(&self, identity: &str, now: SystemTime) -> IceServer {
        let expiry = now
            .checked_add(self.ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let username = format!("{expiry}:{identity}");
        let credential = password(&self.secret, &username);
        IceServer {
            urls: self.urls.clone(),
            username,
            credential,
        }
    }
}

/// `base64(HMAC-SHA1(secret, username))`, the password coturn expects for
/// `username`.
pub fn password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TurnConfig {
        TurnConfig {
            secret: b"north-wind-secret".to_vec(),
            urls: vec!["turn:turn.example.com:3478?transport=udp".into()],
            ttl: Duration::from_secs(3600),
        }
    }

    // Vectors computed independently:
    //   printf %s "1700003600:alice" | openssl dgst -sha1 -hmac north-wind-secret -binary | base64
    //   python3 -c 'import hmac,hashlib,base64; print(base64.b64encode(hmac.new(
    //       b"north-wind-secret", b"1700003600:alice", hashlib.sha1).digest()).decode())'
    #[test]
    fn matches_known_vector() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let server = config().credentials("alice", now);
        assert_eq!(server.username, "1700003600:alice");
        assert_eq!(server.credential, "Ev9WJy6IiNjALah9jF2ImB4FP0Y=");
        assert_eq!(server.urls, config().urls);
    }

    #[test]
    fn identity_may_contain_colons() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let server = config().credentials("u:with:colons", now);
        assert_eq!(server.username, "1700003600:u:with:colons");
        assert_eq!(server.credential, "zjqx9kB/NCMSmznlNIPWg3hrWj0=");
    }

    #[test]
    fn expiry_follows_ttl_and_secret_matters() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut short = config();
        short.ttl = Duration::from_secs(60);
        assert_eq!(short.credentials("a", now).username, "1700000060:a");
        let mut other = config();
        other.secret = b"another-secret".to_vec();
        assert_ne!(
            other.credentials("alice", now).credential,
            config().credentials("alice", now).credential
        );
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        assert!(!format!("{:?}", config()).contains("north-wind"));
    }
}

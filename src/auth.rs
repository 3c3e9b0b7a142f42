//! Access tokens: HS256 JWTs that name a user and the rooms it may join.
//!
//! A token is minted by whoever runs the deployment (`switchboard token`, or
//! the application's own backend with the same shared secret) and carried by
//! the client either in `Hello.access_token` or as an `access_token.<jwt>`
//! entry of `Sec-WebSocket-Protocol`, never in the URL, because URLs end up in
//! proxy and access logs.
//!
//! Verification is pure: the caller passes the current time, so expiry rules
//! are tested without clocks. Only HS256 is accepted; the algorithm named in
//! the token header is checked before anything else, so `alg: none` and
//! algorithm-confusion tokens are refused without reaching the signature code.
//!
//! # Claims
//! | claim          | meaning                                                      |
//! |----------------|--------------------------------------------------------------|
//! | `sub`          | the user name (required, a valid [`UserName`])               |
//! | `exp`          | expiry, unix seconds (required)                              |
//! | `nbf`          | not valid before, unix seconds (optional)                    |
//! | `iat`          | issued at, unix seconds (informational)                      |
//! | `iss`, `aud`   | checked when the [`Authenticator`] is configured with them   |
//! | `rooms`        | room ids the user may join                                   |
//! | `room_prefix`  | the user may also join every room whose id starts with this  |
//! | `create_rooms` | the user may create rooms (join one that does not exist yet) |
//! | `max_capacity` | largest capacity the user may give a room it creates         |

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::message::MAX_TOKEN_BYTES;
use crate::protocol::{IdError, RoomId, UserName};

/// Shortest shared secret accepted, in bytes. RFC 7518 §3.2 asks for a key at
/// least as long as the HMAC output (256 bits for HS256).
pub const MIN_SECRET_BYTES: usize = 32;

/// Clock skew tolerated on `exp` and `nbf` unless configured otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// The WebSocket subprotocol a switchboard client offers and the server
/// answers with.
pub const SUBPROTOCOL: &str = "switchboard.v1";

/// Prefix of the `Sec-WebSocket-Protocol` entry that carries a token.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "access_token.";

/// Why a token was refused or could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is longer than the protocol allows; it was not parsed.
    #[error("token is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Length of the refused token in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token is not a JWT: wrong number of parts, bad base64 or bad JSON.
    #[error("token is malformed")]
    Malformed,
    /// The header lists critical extensions (`crit`, RFC 7515 §4.1.11);
    /// this server understands none, so it must refuse the token.
    #[error("token header lists critical extensions ({0}) this server does not understand")]
    CriticalExtension(String),
    /// The header names an algorithm other than HS256 (`none` included).
    #[error("token algorithm {alg:?} is not accepted, only HS256 is")]
    BadAlgorithm {
        /// The algorithm the header names, empty when it names none.
        alg: String,
    },
    /// The signature does not match: forged, tampered, or signed with
    /// another secret.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired at {exp}, it is now {now}")]
    Expired {
        /// The token's `exp`, unix seconds.
        exp: u64,
        /// The time of the check, unix seconds.
        now: u64,
    },
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not valid before {nbf}, it is now {now}")]
    NotYetValid {
        /// The token's `nbf`, unix seconds.
        nbf: u64,
        /// The time of the check, unix seconds.
        now: u64,
    },
    /// A required claim is absent.
    #[error("token lacks the {0:?} claim")]
    MissingClaim(&'static str),
    /// A claim is present but its value is invalid.
    #[error("token claim {claim:?} is invalid: {reason}")]
    BadClaim {
        /// The claim name.
        claim: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `iss` does not match the configured issuer.
    #[error("token issuer is not accepted")]
    BadIssuer,
    /// `aud` does not name this server.
    #[error("token audience is not accepted")]
    BadAudience,
    /// The shared secret is too short to be safe.
    #[error("secret is {len} bytes long, at least {min} are required")]
    WeakSecret {
        /// Length of the refused secret in bytes.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The token could not be signed (minting only).
    #[error("token could not be signed: {0}")]
    Signing(String),
}

/// The claims of a switchboard access token, as they appear in the JWT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    // `sub` and `exp` default only so that jsonwebtoken, which deserializes
    // the claims before it checks required ones, reports them as missing
    // rather than as bad JSON; `verify` requires both.
    /// The user name.
    #[serde(default)]
    pub sub: String,
    /// Expiry, unix seconds.
    #[serde(default)]
    pub exp: u64,
    /// Issued at, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not valid before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Room ids the user may join.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// The user may join every room whose id starts with this. An empty
    /// prefix grants every room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_prefix: Option<String>,
    /// The user may create rooms.
    #[serde(default)]
    pub create_rooms: bool,
    /// Largest capacity the user may give a room it creates; absent means
    /// the server's own limit applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_capacity: Option<u32>,
}

impl Claims {
    /// Claims for `sub`, issued at `now` and valid for `ttl`, with no rooms.
    pub fn new(sub: &str, now: SystemTime, ttl: Duration) -> Claims {
        let iat = unix_seconds(now);
        Claims {
            sub: sub.to_owned(),
            exp: iat.saturating_add(ttl.as_secs()),
            iat: Some(iat),
            nbf: None,
            iss: None,
            aud: None,
            rooms: Vec::new(),
            room_prefix: None,
            create_rooms: false,
            max_capacity: None,
        }
    }
}

/// What a verified token allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    identity: UserName,
    rooms: HashSet<RoomId>,
    room_prefix: Option<String>,
    create_rooms: bool,
    max_capacity: Option<u32>,
    expires_at: SystemTime,
}

impl Grant {
    /// The user the token was issued to.
    pub fn identity(&self) -> &UserName {
        &self.identity
    }

    /// Whether the holder may join `room`. `creating` is true when the room
    /// does not exist yet, so the join would create it; that also needs the
    /// `create_rooms` capability.
    pub fn may_join(&self, room: &RoomId, creating: bool) -> bool {
        let listed = self.rooms.contains(room)
            || self
                .room_prefix
                .as_deref()
                .is_some_and(|prefix| room.as_str().starts_with(prefix));
        listed && (!creating || self.create_rooms)
    }

    /// Whether the holder may create rooms at all.
    pub fn may_create_rooms(&self) -> bool {
        self.create_rooms
    }

    /// Largest capacity the holder may give a room it creates; `None` when
    /// the token sets no limit of its own and the server's limit applies.
    pub fn max_capacity(&self) -> Option<u32> {
        self.max_capacity
    }

    /// When the token expires. A server may close the connection then, or
    /// merely refuse new joins; the grant itself does not change.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

/// Verifies access tokens signed with one shared secret.
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is deliberately left out: Debug output ends up in logs.
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for tokens signed with `secret`, which must be at
    /// least [`MIN_SECRET_BYTES`] long.
    pub fn new(secret: &[u8]) -> Result<Authenticator, AuthError> {
        check_secret(secret)?;
        Ok(Authenticator {
            key: DecodingKey::from_secret(secret),
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
        })
    }

    /// Requires `iss` to equal `issuer`.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Authenticator {
        self.issuer = Some(issuer.into());
        self
    }

    /// Requires `aud` to equal `audience`. Without this, tokens that carry an
    /// `aud` are refused, since they were meant for someone else.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Authenticator {
        self.audience = Some(audience.into());
        self
    }

    /// Sets the clock skew tolerated on `exp` and `nbf`.
    pub fn with_leeway(mut self, leeway: Duration) -> Authenticator {
        self.leeway = leeway;
        self
    }

    /// Verifies `token` at time `now` and returns what it grants.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Grant, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong {
                len: token.len(),
                max: MAX_TOKEN_BYTES,
            });
        }
        check_algorithm(token)?;

        let mut validation = Validation::new(Algorithm::HS256);
        // Time is checked below against the caller's `now`; jsonwebtoken
        // would read the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &validation)
            .map_err(from_jwt_error)?
            .claims;

        let now_s = unix_seconds(now);
        let leeway = self.leeway.as_secs();
        if now_s >= claims.exp.saturating_add(leeway) {
            return Err(AuthError::Expired {
                exp: claims.exp,
                now: now_s,
            });
        }
        if let Some(nbf) = claims.nbf {
            if now_s.saturating_add(leeway) < nbf {
                return Err(AuthError::NotYetValid { nbf, now: now_s });
            }
        }
        grant_from(claims, leeway)
    }
}

/// Builds the grant; its expiry includes the leeway, as `verify` does.
fn grant_from(claims: Claims, leeway: u64) -> Result<Grant, AuthError> {
    let bad = |claim: &'static str| {
        move |e: IdError| AuthError::BadClaim {
            claim,
            reason: e.to_string(),
        }
    };
    let identity = UserName::new(&claims.sub).map_err(bad("sub"))?;
    // A far-future exp ("never expires") must not overflow SystemTime.
    let expires_at = UNIX_EPOCH
        .checked_add(Duration::from_secs(claims.exp.saturating_add(leeway)))
        .ok_or_else(|| AuthError::BadClaim {
            claim: "exp",
            reason: "too far in the future".into(),
        })?;
    let rooms = claims
        .rooms
        .iter()
        .map(|r| RoomId::new(r))
        .collect::<Result<HashSet<_>, _>>()
        .map_err(bad("rooms"))?;
    Ok(Grant {
        identity,
        rooms,
        room_prefix: claims.room_prefix,
        create_rooms: claims.create_rooms,
        max_capacity: claims.max_capacity,
        expires_at,
    })
}

/// Refuses any header whose `alg` is not exactly HS256 before the token
/// reaches jsonwebtoken, which would only report `alg: none` as bad JSON.
fn check_algorithm(token: &str) -> Result<(), AuthError> {
    #[derive(Deserialize)]
    struct JoseHeader {
        alg: Option<String>,
        /// Any JSON: a `crit` of the wrong type is refused all the same.
        crit: Option<serde_json::Value>,
    }
    let header = token.split('.').next().ok_or(AuthError::Malformed)?;
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let header: JoseHeader = serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)?;
    if let Some(crit) = header.crit {
        // RFC 7515 §4.1.11: a recipient that does not understand every
        // listed extension must reject the JWS. We understand none.
        let mut listed = crit.to_string();
        listed.truncate(64);
        return Err(AuthError::CriticalExtension(listed));
    }
    match header.alg.as_deref() {
        Some("HS256") => Ok(()),
        other => Err(AuthError::BadAlgorithm {
            alg: other.unwrap_or_default().to_owned(),
        }),
    }
}

fn from_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.into_kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::BadAlgorithm { alg: String::new() }
        }
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(
            // `verify` only ever requires these four.
            ["exp", "sub", "iss", "aud"]
                .into_iter()
                .find(|known| *known == claim)
                .unwrap_or("unknown"),
        ),
        ErrorKind::InvalidIssuer => AuthError::BadIssuer,
        ErrorKind::InvalidAudience => AuthError::BadAudience,
        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
            // Unreachable: time validation is off and done by `verify`.
            AuthError::Malformed
        }
        _ => AuthError::Malformed,
    }
}

fn check_secret(secret: &[u8]) -> Result<(), AuthError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthError::WeakSecret {
            len: secret.len(),
            min: MIN_SECRET_BYTES,
        });
    }
    Ok(())
}

fn unix_seconds(t: SystemTime) -> u64 {
    // A clock before 1970 is treated as 1970: every token is then "not yet
    // expired" only if its exp is in the future of 1970, which is harmless.
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Signs `claims` with `secret` (HS256). The claims are validated the way
/// [`Authenticator::verify`] would, so a minted token is never one the server
/// refuses for its content.
pub fn mint(claims: &Claims, secret: &[u8]) -> Result<String, AuthError> {
    check_secret(secret)?;
    grant_from(claims.clone(), 0)?;
    if claims.exp == 0 {
        return Err(AuthError::MissingClaim("exp"));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Signing(e.to_string()))
}

/// Mints a token for `sub`, valid from now for `ttl`: the entry point of the
/// `switchboard token` subcommand.
pub fn mint_token(
    secret: &[u8],
    sub: &str,
    rooms: Vec<String>,
    room_prefix: Option<String>,
    ttl: Duration,
    create_rooms: bool,
    max_capacity: Option<u32>,
) -> Result<String, AuthError> {
    let mut claims = Claims::new(sub, SystemTime::now(), ttl);
    claims.rooms = rooms;
    claims.room_prefix = room_prefix;
    claims.create_rooms = create_rooms;
    claims.max_capacity = max_capacity;
    mint(&claims, secret)
}

/// What a client offered in `Sec-WebSocket-Protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OfferedProtocols<'a> {
    /// The client offered [`SUBPROTOCOL`]; the server then answers with it,
    /// and only with it, so the token is never echoed back.
    pub switchboard: bool,
    /// The token from an `access_token.<jwt>` entry.
    pub token: Option<&'a str>,
}

impl OfferedProtocols<'_> {
    /// The value of the `Sec-WebSocket-Protocol` response header, if any.
    pub fn answer(&self) -> Option<&'static str> {
        self.switchboard.then_some(SUBPROTOCOL)
    }
}

/// Reads the `Sec-WebSocket-Protocol` request header: pass each header value
/// (a request may repeat the header) or the values joined with `", "`.
///
/// The token is only accepted next to [`SUBPROTOCOL`]: a browser fails the
/// connection unless the server answers with one of the offered protocols,
/// and the server must not answer with the token. Two tokens, or an empty
/// one, are [`AuthError::Malformed`].
pub fn parse_subprotocols(value: &str) -> Result<OfferedProtocols<'_>, AuthError> {
    if value.len() > MAX_TOKEN_BYTES + 256 {
        return Err(AuthError::TooLong {
            len: value.len(),
            max: MAX_TOKEN_BYTES + 256,
        });
    }
    let mut offered = OfferedProtocols::default();
    for entry in value.split(',').map(str::trim) {
        if entry == SUBPROTOCOL {
            offered.switchboard = true;
        } else if let Some(token) = entry.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX) {
            if token.is_empty() || offered.token.is_some() {
                return Err(AuthError::Malformed);
            }
            offered.token = Some(token);
        }
    }
    if offered.token.is_some() && !offered.switchboard {
        return Err(AuthError::Malformed);
    }
    Ok(offered)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OTHER: &[u8] = b"fedcba9876543210fedcba9876543210";
    /// 2023-11-14T22:13:20Z.
    const T0: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn claims() -> Claims {
        let mut c = Claims::new("alice", at(T0), Duration::from_secs(3600));
        c.rooms = vec!["lobby".into()];
        c.room_prefix = Some("team-a/".into());
        c.max_capacity = Some(8);
        c
    }

    fn auth() -> Authenticator {
        Authenticator::new(SECRET)
            .unwrap()
            .with_leeway(Duration::ZERO)
    }

    fn room(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn valid_token_grants_its_claims() {
        let token = mint(&claims(), SECRET).unwrap();
        let grant = auth().verify(&token, at(T0 + 10)).unwrap();
        assert_eq!(grant.identity().as_str(), "alice");
        assert_eq!(grant.max_capacity(), Some(8));
        assert!(!grant.may_create_rooms());
        assert_eq!(grant.expires_at(), at(T0 + 3600));
    }

    #[test]
    fn expired_token_is_refused() {
        let token = mint(&claims(), SECRET).unwrap();
        assert!(auth().verify(&token, at(T0 + 3599)).is_ok());
        assert_eq!(
            auth().verify(&token, at(T0 + 3600)),
            Err(AuthError::Expired {
                exp: T0 + 3600,
                now: T0 + 3600
            })
        );
        // The leeway forgives a little clock skew, and no more.
        let lenient = auth().with_leeway(Duration::from_secs(30));
        assert!(lenient.verify(&token, at(T0 + 3629)).is_ok());
        assert!(matches!(
            lenient.verify(&token, at(T0 + 3630)),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn not_yet_valid_token_is_refused() {
        let mut c = claims();
        c.nbf = Some(T0 + 100);
        let token = mint(&c, SECRET).unwrap();
        assert_eq!(
            auth().verify(&token, at(T0 + 99)),
            Err(AuthError::NotYetValid {
                nbf: T0 + 100,
                now: T0 + 99
            })
        );
        assert!(auth().verify(&token, at(T0 + 100)).is_ok());
    }

    #[test]
    fn token_with_critical_extensions_is_refused() {
        // Correctly signed, but the header marks an extension critical
        // (RFC 7515 §4.1.11): a verifier that does not know it must refuse.
        let header = b64(r#"{"alg":"HS256","typ":"JWT","crit":["exp2"],"exp2":1}"#);
        let payload = b64(&serde_json::to_string(&claims()).unwrap());
        let signing_input = format!("{header}.{payload}");
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
        let signature =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256).unwrap();
        let token = format!("{signing_input}.{signature}");
        assert!(matches!(
            auth().verify(&token, at(T0)),
            Err(AuthError::CriticalExtension(_))
        ));
        // The same token without `crit` is accepted, so `crit` is the reason.
        let plain = b64(r#"{"alg":"HS256","typ":"JWT"}"#);
        let signing_input = format!("{plain}.{payload}");
        let signature =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256).unwrap();
        assert!(auth()
            .verify(&format!("{signing_input}.{signature}"), at(T0))
            .is_ok());
    }

    #[test]
    fn token_signed_with_another_secret_is_refused() {
        let token = mint(&claims(), OTHER).unwrap();
        assert_eq!(auth().verify(&token, at(T0)), Err(AuthError::BadSignature));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(&format!(
            r#"{{"sub":"mallory","exp":{},"rooms":["lobby"]}}"#,
            T0 + 60
        ));
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert_eq!(
                auth().verify(&token, at(T0)),
                Err(AuthError::BadAlgorithm { alg: "none".into() }),
                "{token}"
            );
        }
        let no_alg = format!("{}.{payload}.", b64(r#"{"typ":"JWT"}"#));
        assert_eq!(
            auth().verify(&no_alg, at(T0)),
            Err(AuthError::BadAlgorithm { alg: String::new() })
        );
    }

    #[test]
    fn other_hmac_algorithms_are_refused() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            auth().verify(&token, at(T0)),
            Err(AuthError::BadAlgorithm {
                alg: "HS512".into()
            })
        );
    }

    #[test]
    fn tampered_payload_is_refused() {
        let token = mint(&claims(), SECRET).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims();
        forged.sub = "admin".into();
        forged.room_prefix = Some(String::new());
        forged.create_rooms = true;
        let payload = b64(&serde_json::to_string(&forged).unwrap());
        parts[1] = &payload;
        assert_eq!(
            auth().verify(&parts.join("."), at(T0)),
            Err(AuthError::BadSignature)
        );

        // Flipping one bit of the signature is refused too.
        let mut bytes = token.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let token = String::from_utf8(bytes).unwrap();
        assert_eq!(auth().verify(&token, at(T0)), Err(AuthError::BadSignature));
    }

    #[test]
    fn garbage_is_malformed() {
        for token in ["", "abc", "a.b.c", "..", "eyJhbGciOiJIUzI1NiJ9.!!!.sig"] {
            assert!(
                matches!(
                    auth().verify(token, at(T0)),
                    Err(AuthError::Malformed | AuthError::BadSignature)
                ),
                "{token:?}"
            );
        }
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            auth().verify(&long, at(T0)),
            Err(AuthError::TooLong {
                len: MAX_TOKEN_BYTES + 1,
                max: MAX_TOKEN_BYTES
            })
        );
    }

    #[test]
    fn missing_and_invalid_claims_are_refused() {
        // Signed correctly, but without exp or sub.
        let sign = |json: &str| {
            let msg = format!("{}.{}", b64(r#"{"alg":"HS256","typ":"JWT"}"#), b64(json));
            let sig = jsonwebtoken::crypto::sign(
                msg.as_bytes(),
                &EncodingKey::from_secret(SECRET),
                Algorithm::HS256,
            )
            .unwrap();
            format!("{msg}.{sig}")
        };
        assert_eq!(
            auth().verify(&sign(r#"{"sub":"alice"}"#), at(T0)),
            Err(AuthError::MissingClaim("exp"))
        );
        assert_eq!(
            auth().verify(&sign(&format!(r#"{{"exp":{}}}"#, T0 + 60)), at(T0)),
            Err(AuthError::MissingClaim("sub"))
        );
        assert!(matches!(
            auth().verify(
                &sign(&format!(r#"{{"sub":" x","exp":{}}}"#, T0 + 60)),
                at(T0)
            ),
            Err(AuthError::BadClaim { claim: "sub", .. })
        ));
        assert!(matches!(
            auth().verify(
                &sign(&format!(r#"{{"sub":"x","exp":{},"rooms":[""]}}"#, T0 + 60)),
                at(T0)
            ),
            Err(AuthError::BadClaim { claim: "rooms", .. })
        ));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let mut c = claims();
        c.iss = Some("https://app.example".into());
        c.aud = Some("switchboard".into());
        let token = mint(&c, SECRET).unwrap();
        let strict = auth()
            .with_issuer("https://app.example")
            .with_audience("switchboard");
        assert!(strict.verify(&token, at(T0)).is_ok());
        assert_eq!(
            auth()
                .with_issuer("https://evil.example")
                .verify(&token, at(T0)),
            Err(AuthError::BadIssuer)
        );
        assert_eq!(
            auth().with_audience("other").verify(&token, at(T0)),
            Err(AuthError::BadAudience)
        );
        // A token meant for some audience is not accepted by a server that
        // names none.
        assert_eq!(auth().verify(&token, at(T0)), Err(AuthError::BadAudience));
        // A server that requires an issuer refuses tokens without one.
        let plain = mint(&claims(), SECRET).unwrap();
        assert_eq!(
            auth()
                .with_issuer("https://app.example")
                .verify(&plain, at(T0)),
            Err(AuthError::MissingClaim("iss"))
        );
    }

    #[test]
    fn rooms_list_and_prefix_rules() {
        let grant = auth()
            .verify(&mint(&claims(), SECRET).unwrap(), at(T0))
            .unwrap();
        assert!(grant.may_join(&room("lobby"), false));
        assert!(grant.may_join(&room("team-a/standup"), false));
        assert!(!grant.may_join(&room("lobby2"), false));
        assert!(!grant.may_join(&room("lobb"), false));
        assert!(!grant.may_join(&room("team-b/standup"), false));
        assert!(!grant.may_join(&room("team-a"), false));
        // Without create_rooms an allowed room can be joined but not created.
        assert!(!grant.may_join(&room("lobby"), true));
        assert!(!grant.may_join(&room("team-a/new"), true));

        let mut c = claims();
        c.create_rooms = true;
        let creator = auth().verify(&mint(&c, SECRET).unwrap(), at(T0)).unwrap();
        assert!(creator.may_join(&room("team-a/new"), true));
        assert!(!creator.may_join(&room("elsewhere"), true));

        // No rooms and no prefix: nothing.
        let mut c = claims();
        c.rooms.clear();
        c.room_prefix = None;
        let none = auth().verify(&mint(&c, SECRET).unwrap(), at(T0)).unwrap();
        assert!(!none.may_join(&room("lobby"), false));

        // An empty prefix is every room.
        c.room_prefix = Some(String::new());
        let all = auth().verify(&mint(&c, SECRET).unwrap(), at(T0)).unwrap();
        assert!(all.may_join(&room("anything"), false));
    }

    #[test]
    fn minting_checks_its_inputs() {
        assert_eq!(
            mint(&claims(), b"short"),
            Err(AuthError::WeakSecret { len: 5, min: 32 })
        );
        assert!(Authenticator::new(b"short").is_err());
        let mut c = claims();
        c.sub = String::new();
        assert!(matches!(
            mint(&c, SECRET),
            Err(AuthError::BadClaim { claim: "sub", .. })
        ));
        let token = mint_token(
            SECRET,
            "bob",
            vec!["r1".into()],
            None,
            Duration::from_secs(60),
            true,
            Some(4),
        )
        .unwrap();
        let grant = Authenticator::new(SECRET)
            .unwrap()
            .verify(&token, SystemTime::now())
            .unwrap();
        assert_eq!(grant.identity().as_str(), "bob");
        assert!(grant.may_join(&room("r1"), true));
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let text = format!("{:?}", auth());
        assert!(!text.contains("0123456789"), "{text}");
    }

    #[test]
    fn token_from_subprotocol_header() {
        let token = mint(&claims(), SECRET).unwrap();
        let header = format!("switchboard.v1, access_token.{token}");
        let offered = parse_subprotocols(&header).unwrap();
        assert_eq!(offered.token, Some(token.as_str()));
        assert_eq!(offered.answer(), Some("switchboard.v1"));
        assert!(auth().verify(offered.token.unwrap(), at(T0)).is_ok());

        // Order and spacing do not matter; unknown entries are ignored.
        let header = format!("x-other,access_token.{token} ,  switchboard.v1");
        assert_eq!(
            parse_subprotocols(&header).unwrap().token,
            Some(token.as_str())
        );

        // No token: fine, the token may come in Hello.
        let offered = parse_subprotocols("switchboard.v1").unwrap();
        assert_eq!(offered.token, None);
        assert_eq!(offered.answer(), Some("switchboard.v1"));
        assert_eq!(parse_subprotocols("chat").unwrap().answer(), None);

        // A token without switchboard.v1, two tokens, or an empty one.
        assert_eq!(
            parse_subprotocols(&format!("access_token.{token}")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            parse_subprotocols("switchboard.v1, access_token.a, access_token.b"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            parse_subprotocols("switchboard.v1, access_token."),
            Err(AuthError::Malformed)
        );
        assert!(matches!(
            parse_subprotocols(&"x".repeat(MAX_TOKEN_BYTES + 257)),
            Err(AuthError::TooLong { .. })
        ));
    }

    #[test]
    fn a_far_future_expiry_is_a_claim_error_not_a_panic() {
        let mut c = claims();
        c.exp = u64::MAX;
        assert!(matches!(
            mint(&c, SECRET),
            Err(AuthError::BadClaim { claim: "exp", .. })
        ));
    }

    #[test]
    fn the_grant_expires_with_the_leeway_verify_allowed() {
        let c = claims();
        let token = mint(&c, SECRET).unwrap();
        let lenient = Authenticator::new(SECRET)
            .unwrap()
            .with_leeway(Duration::from_secs(30));
        let grant = lenient.verify(&token, at(c.exp + 10)).unwrap();
        assert_eq!(grant.expires_at(), at(c.exp + 30));
    }
}

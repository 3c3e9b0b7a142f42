//! Validated identifiers: peer ids, room ids and user names.
//!
//! Room ids and user names arrive from the network; they are checked once at
//! the codec boundary and are cheap to clone afterwards.

use std::fmt;
use std::sync::Arc;

/// Longest room id or user name, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 64;

/// The id of one connection, unique across every node of a routing space.
///
/// The high 16 bits name the node that owns the connection and the low 48
/// bits count connections on that node, so a node can route to a peer it does
/// not host without a directory lookup for the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl PeerId {
    /// Builds the id of the `serial`-th connection of node `node`.
    pub fn new(node: u16, serial: u64) -> PeerId {
        PeerId((u64::from(node) << 48) | (serial & ((1 << 48) - 1)))
    }

    /// The node that owns this peer.
    pub fn node(self) -> u16 {
        (self.0 >> 48) as u16
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// Why a room id or user name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("must not be empty")]
    Empty,
    /// The id is longer than [`MAX_ID_BYTES`].
    #[error("is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Length of the refused id in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id contains a control character or surrounding whitespace.
    #[error("contains control characters or leading/trailing whitespace")]
    BadCharacters,
}

fn check(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong {
            len: s.len(),
            max: MAX_ID_BYTES,
        });
    }
    if s.chars().any(char::is_control) || s.trim() != s {
        return Err(IdError::BadCharacters);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s`: non-empty, at most [`MAX_ID_BYTES`] bytes, no
            /// control characters, no leading or trailing whitespace.
            pub fn new(s: &str) -> Result<Self, IdError> {
                check(s)?;
                Ok($name(Arc::from(s)))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                $name::new(s)
            }
        }
    };
}

name_type!(
    /// The id of a room, chosen by the clients.
    RoomId
);
name_type!(
    /// A logged-in user name, unique across the routing space.
    UserName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        assert_eq!(RoomId::new("1001").unwrap().as_str(), "1001");
        assert_eq!(UserName::new("张三").unwrap().as_str(), "张三");
        assert!(RoomId::new(&"r".repeat(MAX_ID_BYTES)).is_ok());
    }

    #[test]
    fn refuses_bad_ids() {
        assert_eq!(RoomId::new(""), Err(IdError::Empty));
        assert_eq!(
            RoomId::new(&"r".repeat(MAX_ID_BYTES + 1)),
            Err(IdError::TooLong { len: 65, max: 64 })
        );
        assert_eq!(UserName::new("a\nb"), Err(IdError::BadCharacters));
        assert_eq!(UserName::new(" alice"), Err(IdError::BadCharacters));
    }

    #[test]
    fn peer_id_carries_its_node() {
        let id = PeerId::new(7, 42);
        assert_eq!(id.node(), 7);
        assert_eq!(id.0 & 0xffff_ffff_ffff, 42);
    }
}

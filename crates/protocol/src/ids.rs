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
/// The high 16 bits name the node that owns the connection, the next 16
/// are the node's epoch (a value per start of the node, so a restarted node
/// never issues an id another node may still hold), and the low 32 count
/// connections within the epoch. A node can route to a peer it does not
/// host without a directory lookup for the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl PeerId {
    /// The id of the `serial`-th connection of node `node` in `epoch`.
    pub fn new(node: u16, epoch: u16, serial: u32) -> PeerId {
        PeerId((u64::from(node) << 48) | (u64::from(epoch) << 32) | u64::from(serial))
    }

    /// The node that owns this peer.
    pub fn node(self) -> u16 {
        (self.0 >> 48) as u16
    }

    /// The epoch of its node in which this id was issued.
    pub fn epoch(self) -> u16 {
        (self.0 >> 32) as u16
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
    /// The id contains a character outside the safe profile (see
    /// [`check_profile`]).
    #[error(
        "contains {0}; ids may not hold control, format (bidi, zero-width), private-use, \
         unassigned or separator characters other than an inner space"
    )]
    BadCharacters(&'static str),
    /// The id is not in Unicode Normalization Form C, so two ids that look
    /// the same could differ in bytes.
    #[error("is not in Unicode Normalization Form C")]
    NotNormalized,
}

/// The safe profile of room ids and user names, in the spirit of RFC 8265
/// (PRECIS) but permissive enough for the ids the tutorials use (digits,
/// spaces, punctuation, any script): every character is a letter, mark,
/// number, punctuation, symbol or U+0020 SPACE (not at either end), and the
/// whole string is in NFC. That leaves out control characters (Cc), format
/// characters (Cf: bidi overrides such as U+202E, zero-width U+200B..U+200D,
/// U+FEFF), surrogates, private use, unassigned code points, and every other
/// separator (U+00A0, U+2028, ideographic space...), which together are
/// what look-alike names and log injection are made of.
pub fn check_profile(s: &str) -> Result<(), IdError> {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    for c in s.chars() {
        let why = match c.general_category() {
            G::Control => "a control character",
            G::Format => "a format character (bidi control or zero-width)",
            G::Surrogate | G::PrivateUse | G::Unassigned => "a private-use or unassigned character",
            G::LineSeparator | G::ParagraphSeparator => "a line or paragraph separator",
            G::SpaceSeparator if c != ' ' => "a space other than U+0020",
            _ => continue,
        };
        return Err(IdError::BadCharacters(why));
    }
    if s.starts_with(' ') || s.ends_with(' ') {
        return Err(IdError::BadCharacters("a leading or trailing space"));
    }
    if !unicode_normalization::is_nfc(s) {
        return Err(IdError::NotNormalized);
    }
    Ok(())
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
    check_profile(s)
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s`: non-empty, at most [`MAX_ID_BYTES`] bytes, and
            /// within the safe profile of [`check_profile`].
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
        assert!(matches!(
            UserName::new("a\nb"),
            Err(IdError::BadCharacters(_))
        ));
        assert!(matches!(
            UserName::new(" alice"),
            Err(IdError::BadCharacters(_))
        ));
    }

    #[test]
    fn refuses_look_alike_and_invisible_characters() {
        // "carol" with a right-to-left override, a zero-width space, a
        // zero-width joiner, a byte-order mark, a no-break space.
        for bad in [
            "car\u{202E}lo",
            "car\u{200B}ol",
            "car\u{200D}ol",
            "\u{FEFF}carol",
            "car\u{00A0}ol",
            "car\u{2028}ol",
            "car\u{E000}ol",
        ] {
            assert!(
                matches!(UserName::new(bad), Err(IdError::BadCharacters(_))),
                "{bad:?} accepted"
            );
            assert!(RoomId::new(bad).is_err(), "room {bad:?} accepted");
        }
        // e + combining acute is NFD; the NFC form is accepted.
        assert_eq!(UserName::new("jose\u{301}"), Err(IdError::NotNormalized));
        assert!(UserName::new("jos\u{e9}").is_ok());
        // Ordinary ids of every script, digits, punctuation, inner spaces.
        for good in ["Alice Smith", "张三", "room-1001", "#general", "Łódź", "🙂"] {
            assert!(UserName::new(good).is_ok(), "{good:?} refused");
            assert!(RoomId::new(good).is_ok(), "room {good:?} refused");
        }
        // The price of refusing zero-width joiners: emoji ZWJ sequences.
        assert!(UserName::new("👩\u{200D}💻").is_err());
    }

    #[test]
    fn peer_id_carries_its_node() {
        let id = PeerId::new(7, 0x1234, 42);
        assert_eq!(id.node(), 7);
        assert_eq!(id.epoch(), 0x1234);
        assert_eq!(id.0 & 0xffff_ffff, 42);
        assert_ne!(id, PeerId::new(7, 0x1235, 42), "another start, another id");
    }
}

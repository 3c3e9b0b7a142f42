//! The demo page and browser SDK, embedded in the binary.

/// An embedded file: its content type and bytes.
pub(crate) struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The embedded file served at `path`, if any.
pub(crate) fn get(_path: &str) -> Option<Asset> {
    None
}

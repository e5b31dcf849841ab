//! Small helpers shared by `cargo xtask`, the integration tests and the bench: the toolchain
//! pins, running commands, and installing Debian packages. Nothing heavy: the tests and the
//! bench depend on this crate, never the other way round.
pub mod image;
pub mod pins;
pub mod sys;

use std::path::PathBuf;

/// The workspace root (the directory of the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

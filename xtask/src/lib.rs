//! xtask as a library: the pieces that tests share with the `cargo xtask` commands
//! (demo configs, QEMU command lines), so that no command line is written twice.

pub mod authority;
pub mod config;
pub mod http;
pub mod load;
pub mod qemu;
pub mod setup;
pub mod watchdog;

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `target/` of the workspace (honours CARGO_TARGET_DIR; a relative one is taken from the
/// workspace root, where the xtask commands run cargo).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root().join(d))
        .unwrap_or_else(|| root().join("target"))
}

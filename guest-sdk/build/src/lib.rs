//! Build ferry guest crates to Wasm from a build script.
//!
//! A driver crate (or a test crate) that embeds a guest module calls this from its `build.rs`:
//!
//! ```no_run
//! // build.rs
//! let wasm = ferry_guest_build::Guest::new("../my-guest").build().unwrap();
//! println!("cargo:rustc-env=MY_GUEST_WASM={}", wasm.display());
//! // or, for several guests at once:
//! ferry_guest_build::build_and_export(&[("MY_GUEST_WASM", "../my-guest")], &[]);
//! ```
//!
//! and then `include_bytes!(env!("MY_GUEST_WASM"))` or reads the file. The guest is built with
//! `cargo build --release --target wasm32-unknown-unknown` in a target directory of its own
//! (beside the outer build's), so the nested cargo never waits on the outer one's lock.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Wasm target guests are built for.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// A guest crate to build.
#[derive(Debug, Clone)]
pub struct Guest {
    dir: PathBuf,
    watch: Vec<PathBuf>,
    target_dir: Option<PathBuf>,
    profile: String,
}

/// Why a guest did not build.
#[derive(Debug)]
pub enum BuildError {
    /// The guest's `Cargo.toml` could not be read or has no package name.
    Manifest(String),
    /// `cargo` could not be started.
    Spawn(std::io::Error),
    /// The wasm32 target is not installed for this toolchain.
    MissingTarget,
    /// `cargo build` failed; its output was printed by cargo.
    Failed(String),
    /// The build succeeded but the `.wasm` file is not where it should be.
    NoArtifact(PathBuf),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Manifest(m) => write!(f, "guest manifest: {m}"),
            Self::Spawn(e) => write!(f, "could not run cargo: {e}"),
            Self::MissingTarget => write!(
                f,
                "the {WASM_TARGET} target is not installed; run `rustup target add {WASM_TARGET}`"
            ),
            Self::Failed(m) => write!(f, "building the guest failed: {m}"),
            Self::NoArtifact(p) => write!(f, "the guest built but {} is missing", p.display()),
        }
    }
}

impl std::error::Error for BuildError {}

impl Guest {
    /// The guest crate in `dir` (relative paths are relative to the calling crate's manifest
    /// directory).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        let dir = if dir.is_relative() {
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(dir)
        } else {
            dir.to_path_buf()
        };
        Self {
            dir,
            watch: Vec::new(),
            target_dir: None,
            profile: "release".into(),
        }
    }

    /// Also rebuild when files under `path` change (for example a path dependency of the
    /// guest). The guest's own directory is always watched.
    pub fn watch(mut self, path: impl AsRef<Path>) -> Self {
        let p = path.as_ref();
        let p = if p.is_relative() {
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(p)
        } else {
            p.to_path_buf()
        };
        self.watch.push(p);
        self
    }

    /// Where the nested build puts its output (default: `ferry-guests` beside the outer
    /// build's target directory).
    pub fn target_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.target_dir = Some(dir.into());
        self
    }

    /// The cargo profile (default `release`).
    pub fn profile(mut self, profile: &str) -> Self {
        self.profile = profile.to_owned();
        self
    }

    /// Builds the guest and returns the path of its `.wasm` file. Prints the
    /// `cargo:rerun-if-changed` lines for a build script.
    pub fn build(&self) -> Result<PathBuf, BuildError> {
        let manifest = self.dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| BuildError::Manifest(format!("{}: {e}", manifest.display())))?;
        let name = package_name(&text).ok_or_else(|| {
            BuildError::Manifest(format!("{}: no [package] name", manifest.display()))
        })?;
        let target_dir = match &self.target_dir {
            Some(d) => d.clone(),
            None => default_target_dir(),
        };

        for p in std::iter::once(&self.dir).chain(&self.watch) {
            for entry in watch_list(p) {
                println!("cargo:rerun-if-changed={}", entry.display());
            }
        }

        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let mut cmd = Command::new(cargo);
        cmd.arg("build")
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target")
            .arg(WASM_TARGET)
            .arg("--profile")
            .arg(&self.profile)
            .arg("--target-dir")
            .arg(&target_dir);
        // Flags meant for the outer (native) build must not reach the Wasm build.
        for var in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET_DIR",
            "RUSTC_WORKSPACE_WRAPPER",
        ] {
            cmd.env_remove(var);
        }
        let out = cmd.output().map_err(BuildError::Spawn)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("target may not be installed")
                || stderr.contains("can't find crate for `core`")
                || stderr.contains("can't find crate for `std`")
            {
                return Err(BuildError::MissingTarget);
            }
            return Err(BuildError::Failed(stderr.into_owned()));
        }
        let profile_dir = if self.profile == "dev" {
            "debug"
        } else {
            &self.profile
        };
        let wasm = target_dir
            .join(WASM_TARGET)
            .join(profile_dir)
            .join(format!("{}.wasm", name.replace('-', "_")));
        if wasm.exists() {
            Ok(wasm)
        } else {
            Err(BuildError::NoArtifact(wasm))
        }
    }
}

/// Builds each `(ENV_VAR, guest_dir)` guest, watching `watch` as well, and exports each
/// artefact's path to the crate as `ENV_VAR` (read it with `env!`). For a build script; a
/// guest that does not build stops the build with the reason.
pub fn build_and_export(guests: &[(&str, &str)], watch: &[&str]) {
    for (env, dir) in guests {
        let guest = watch
            .iter()
            .fold(Guest::new(dir), |guest, path| guest.watch(path));
        match guest.build() {
            Ok(path) => println!("cargo:rustc-env={env}={}", path.display()),
            Err(e) => panic!("building guest {dir}: {e}"),
        }
    }
}

/// The files to watch under `p`, skipping build output.
fn watch_list(p: &Path) -> Vec<PathBuf> {
    if !p.is_dir() {
        return vec![p.to_path_buf()];
    }
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(p) else {
        return vec![p.to_path_buf()];
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            out.extend(watch_list(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn default_target_dir() -> PathBuf {
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    std::env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .and_then(|out| out.ancestors().nth(4).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("ferry-guests")
}

/// The `name` in the `[package]` table of a Cargo.toml (a small reader, enough for the
/// `name = "..."` line every manifest has).
fn package_name(toml: &str) -> Option<String> {
    let mut in_package = false;
    for line in toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if in_package
            && let Some(rest) = line.strip_prefix("name")
            && let Some(value) = rest.trim_start().strip_prefix('=')
        {
            return Some(value.trim().trim_matches('"').to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_package_name() {
        let toml =
            "[workspace]\nname = \"no\"\n[package]\nname = \"my-guest\"\nversion = \"0.1.0\"\n";
        assert_eq!(package_name(toml).as_deref(), Some("my-guest"));
        assert_eq!(package_name("[dependencies]\nname = \"x\"\n"), None);
    }
}

//! Which code QEMU translated, by source: the blocks of a `-d in_asm` log mapped to the files
//! of the image's code with `addr2line` (binutils) on the build that keeps its line tables.
//!
//! Under TCG a boot's time is mostly QEMU translating code the first time it runs (issue 11),
//! so the blocks a source file or crate adds to a boot are its cost there. `cargo xtask bench
//! boot` uses this for the agent's image and the network floor image.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Where a block's code comes from when `addr2line` knows no file for it: outside the image
/// (QEMU's firmware, qboot on x86) or code without line tables (the boot assembly).
pub const UNKNOWN: &str = "?? (firmware, boot assembly)";

/// The guest address of each translated block in a QEMU `-d in_asm` log: the address of the
/// first instruction after each `IN:` line, in translation order.
pub fn block_addresses(log: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut lines = log.lines();
    while let Some(line) = lines.next() {
        if !line.starts_with("IN:") {
            continue;
        }
        // The block's first instruction: `0x00000000001000b0:  bytes  mnemonic`.
        let first = lines.by_ref().find_map(|l| {
            let l = l.trim_start();
            let hex = l.strip_prefix("0x")?.split(':').next()?;
            u64::from_str_radix(hex, 16).ok()
        });
        out.extend(first);
    }
    out
}

/// The source a file path of the line tables stands for: a crate from the registry by its
/// name (`smoltcp`), Rust's own library as `core` (or `alloc`...), this repository's files by
/// their directory (`agent/src/config`), anything else as [`UNKNOWN`].
pub fn source_of(path: &str) -> String {
    if let Some(rest) = path.split("/registry/src/").nth(1) {
        // `index.crates.io-…/smoltcp-0.14.0/src/…`: the crate's directory, less its version.
        if let Some(dir) = rest.split('/').nth(1) {
            let name = match dir.rfind('-') {
                Some(i) if dir[i + 1..].starts_with(|c: char| c.is_ascii_digit()) => &dir[..i],
                _ => dir,
            };
            return name.to_string();
        }
    }
    if let Some(rest) = path.split("/library/").nth(1) {
        if path.contains("/rustc/") || path.contains("/rustlib/") {
            return rest.split('/').next().unwrap_or("core").to_string();
        }
    }
    let root = crate::root();
    if let Some(rest) = path.strip_prefix(&format!("{}/", root.display())) {
        // `agent/src/config.rs` -> `agent/src/config`; `agent/src/net/mod.rs` -> `agent/src/net`.
        let rest = rest.strip_suffix(".rs").unwrap_or(rest);
        return rest.strip_suffix("/mod").unwrap_or(rest).to_string();
    }
    UNKNOWN.to_string()
}

/// Whether a source is Rust's own library: its code is inlined everywhere, so a block in it
/// counts for the frame that inlined it.
fn is_std(source: &str) -> bool {
    matches!(source, "core" | "alloc" | "std")
}

/// The blocks at `addrs` counted by source, most first: `addr2line -a -i` on `symbols` (the
/// image's ELF with its line tables); each block counts for the innermost frame of its first
/// instruction that is not Rust's own library (the function it was inlined into), else for
/// that library.
pub fn by_source(symbols: &Path, addrs: &[u64]) -> Result<Vec<(String, usize)>, String> {
    let mut child = Command::new("addr2line")
        .args(["-a", "-i", "-e"])
        .arg(symbols)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("addr2line (binutils): {e}"))?;
    let input: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("addr2line: {e}"))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(format!("addr2line: {}", out.status));
    }
    Ok(count(&String::from_utf8_lossy(&out.stdout)))
}

/// Count `addr2line -a -i` output: an address line (`0x…`), then one `file:line` line per
/// inlined frame, innermost first.
fn count(text: &str) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut current: Option<String> = None;
    let mut flush = |current: &mut Option<String>| {
        if let Some(source) = current.take() {
            *counts.entry(source).or_default() += 1;
        }
    };
    for line in text.lines() {
        if line.starts_with("0x") {
            flush(&mut current);
            current = Some(String::new());
            continue;
        }
        let Some(source) = current.as_mut() else {
            continue;
        };
        let file = line.rsplit_once(':').map_or(line, |(file, _)| file);
        let here = source_of(file);
        if source.is_empty() || (is_std(source) && !is_std(&here) && here != UNKNOWN) {
            *source = here;
        }
    }
    flush(&mut current);
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

/// `counts` as one line: the first `top` sources, then the rest summed.
pub fn summary(counts: &[(String, usize)], top: usize) -> String {
    let total: usize = counts.iter().map(|c| c.1).sum();
    let mut parts: Vec<String> = counts
        .iter()
        .take(top)
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    let rest: usize = counts.iter().skip(top).map(|c| c.1).sum();
    if rest > 0 {
        parts.push(format!("other {rest}"));
    }
    format!("{total} blocks: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_an_in_asm_log() {
        let log =
            "----------------\nIN: \n0xfffffff0:  e9 8d ff                 jmp      0xff80\n\n\
                   ----------------\nIN: main\n0x00000000001000b0:  31 c0  xorw %ax, %ax\n\
                   0x00000000001000b2:  8e d8  movw %ax, %ds\n\n";
        assert_eq!(block_addresses(log), [0xffff_fff0, 0x10_00b0]);
        assert!(block_addresses("nothing translated\n").is_empty());
    }

    #[test]
    fn sources_of_paths() {
        let root = crate::root();
        assert_eq!(
            source_of("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/smoltcp-0.14.0/src/iface/interface/mod.rs"),
            "smoltcp"
        );
        assert_eq!(
            source_of("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/serde-json-core-0.6.0/src/de/mod.rs"),
            "serde-json-core"
        );
        assert_eq!(
            source_of("/rustc/59807616e1fa2540724bfbac14d7976d7/library/core/src/slice/mod.rs"),
            "core"
        );
        assert_eq!(
            source_of(&format!("{}/agent/src/net/mod.rs", root.display())),
            "agent/src/net"
        );
        assert_eq!(
            source_of(&format!("{}/agent/src/config.rs", root.display())),
            "agent/src/config"
        );
        assert_eq!(source_of("??"), UNKNOWN);
    }

    #[test]
    fn a_block_counts_for_the_frame_that_inlined_core() {
        let root = crate::root().display().to_string();
        let text = format!(
            "0x0000000000101000\n/rustc/x/library/core/src/ptr/mod.rs:10\n\
             /root/.cargo/registry/src/i/smoltcp-0.14.0/src/wire/ip.rs:3\n{root}/agent/src/http.rs:7\n\
             0x0000000000102000\n/rustc/x/library/core/src/num/mod.rs:1\n\
             0x0000000000103000\n??:0\n\
             0x0000000000104000\n{root}/agent/src/http.rs:9\n"
        );
        assert_eq!(
            count(&text),
            [
                ("?? (firmware, boot assembly)".to_string(), 1),
                ("agent/src/http".to_string(), 1),
                ("core".to_string(), 1),
                ("smoltcp".to_string(), 1),
            ]
        );
        assert_eq!(
            summary(&count(&text), 2),
            "4 blocks: ?? (firmware, boot assembly) 1, agent/src/http 1, other 2"
        );
    }
}

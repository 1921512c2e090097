//! `cargo xtask size [--json]`: build each image variant listed in `qemu/size-budget.json`
//! (profile `image`: lto, `opt-level = "s"`, stripped) and print its file size and the sizes of
//! `.text`, `.rodata`, `.data` and `.bss`, read from the ELF. Fails when a variant is over its
//! `max_bytes` (a `null` budget is reported only). A variant whose cargo feature
//! `imds-unikernel` does not define (yet) is reported as skipped.
//!
//! A variant with `"arch": "aarch64"` is the aarch64 image (`aarch64-unknown-none-softfloat`):
//! its file is the flat Linux arm64 Image QEMU boots (no ELF headers, `.bss` not in it), its
//! sections and symbols are read from cargo's ELF of the same code. Its budget is x86's (a
//! reported target until the aarch64 images met it); the `core::fmt` rule holds for its
//! default image as for x86's.
//!
//! Each variant is built where the tests build it (`xtask::qemu::try_build_image_with`: the
//! default image in `target/`, a feature build in `target/image-<features>/`).
//!
//! Where the bytes are: cargo's output of each variant (the same code, with its symbol table:
//! xtask strips a copy for QEMU) is read and its defined symbols are summed per crate (demangled names; the
//! first path segment, or the implementing type's crate for `<T as Trait>::f`) and listed by
//! size (the 20 largest), like cargo-bloat. The default image must not reach `core::fmt`: a
//! `core::fmt::write` symbol in it fails the command (the formatting machinery costs ~50 KB).
//! Everything goes to `target/bench/size.json`.

use object::{Object, ObjectSection};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use xtask::qemu::{self, Arch};
use xtask::{root, target_dir};

type Result<T = ()> = std::result::Result<T, String>;

/// The budget file, relative to the workspace root.
pub const BUDGET_FILE: &str = "qemu/size-budget.json";
/// How many of the largest symbols are listed.
pub const TOP_SYMBOLS: usize = 20;
/// The sections reported.
pub const SECTIONS: [&str; 4] = [".text", ".rodata", ".data", ".bss"];

/// A variant from the budget file.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub arch: Arch,
    pub features: Vec<String>,
    pub max_bytes: Option<u64>,
    /// A size reported against, never enforced.
    pub target_bytes: Option<u64>,
}

/// Sizes of one built image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizes {
    pub file: u64,
    /// `(name, bytes)` for [`SECTIONS`] present in the ELF.
    pub sections: Vec<(String, u64)>,
}

pub fn parse_budget(text: &str) -> Result<Vec<Variant>> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("{BUDGET_FILE}: {e}"))?;
    let list = doc["variants"]
        .as_array()
        .ok_or_else(|| format!("{BUDGET_FILE}: `variants` must be a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let bad = |what: &str| format!("{BUDGET_FILE}: variants[{i}].{what}");
            let name = v["name"]
                .as_str()
                .ok_or_else(|| bad("name must be a string"))?
                .to_string();
            let features = match &v["features"] {
                Value::Null => Vec::new(),
                Value::Array(a) => a
                    .iter()
                    .map(|f| f.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("features must be strings"))?,
                _ => return Err(bad("features must be a list")),
            };
            let bytes = |key: &str| match &v[key] {
                Value::Null => Ok(None),
                m => m
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| bad(&format!("{key} must be a number or null"))),
            };
            let arch = match &v["arch"] {
                Value::Null => Arch::X86_64,
                Value::String(a) => a.parse().map_err(|e: String| bad(&format!("arch: {e}")))?,
                _ => return Err(bad("arch must be a string")),
            };
            Ok(Variant {
                name,
                arch,
                features,
                max_bytes: bytes("max_bytes")?,
                target_bytes: bytes("target_bytes")?,
            })
        })
        .collect()
}

/// The size of `image` (the file QEMU boots: a stripped ELF, or a flat Image) and the sections
/// of `elf`, an ELF of the same code (the image itself when it is one).
pub fn read_sizes(image: &Path, elf: &Path) -> Result<Sizes> {
    let file = std::fs::metadata(image)
        .map_err(|e| format!("{}: {e}", image.display()))?
        .len();
    let data = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let elf = object::File::parse(&*data).map_err(|e| format!("{}: {e}", elf.display()))?;
    let sections = SECTIONS
        .iter()
        .filter_map(|name| {
            elf.section_by_name(name)
                .map(|s| (name.to_string(), s.size()))
        })
        .collect();
    Ok(Sizes { file, sections })
}

/// The features `imds-unikernel` defines (`cargo metadata`).
fn package_features() -> Result<Vec<String>> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let pkg = meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == qemu::PACKAGE))
        .ok_or("cargo metadata: no imds-unikernel package")?;
    Ok(pkg["features"]
        .as_object()
        .map(|f| f.keys().cloned().collect())
        .unwrap_or_default())
}

/// Build a variant: the file QEMU boots and cargo's output with symbols (the same code).
fn build_variant(v: &Variant) -> Result<(PathBuf, PathBuf)> {
    let features: Vec<&str> = v.features.iter().map(String::as_str).collect();
    crate::boot::build_image_for(v.arch, &features)
}

/// One symbol of the unstripped image.
#[derive(Debug, Clone, PartialEq)]
pub struct Symbol {
    /// Demangled, without the hash.
    pub name: String,
    pub krate: String,
    pub bytes: u64,
}

/// The crate a demangled symbol belongs to: its first path segment; for `<T as Trait>::f` and
/// `<T>::f`, T's crate (the code is T's implementation); `[other]` for names without a path
/// (assembly, linker symbols).
pub fn crate_of(demangled: &str) -> String {
    let mut s = demangled;
    while let Some(rest) = s.strip_prefix('<') {
        s = rest.trim_start_matches('&').trim_start_matches("mut ");
        s = s.trim_start_matches("dyn ");
    }
    match s.find("::") {
        Some(i) if !s[..i].contains([' ', '<', '>', '[', '(']) && i > 0 => s[..i].to_string(),
        _ => "[other]".to_string(),
    }
}

/// The defined code and data symbols of an unstripped ELF, largest first.
pub fn read_symbols(image: &Path) -> Result<Vec<Symbol>> {
    use object::{ObjectSymbol, SectionKind, SymbolKind};
    let data = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let elf = object::File::parse(&*data).map_err(|e| format!("{}: {e}", image.display()))?;
    // Bytes of the file only: `.bss` statics cost RAM, not image bytes.
    let in_file = |s: &object::Symbol| {
        s.section_index()
            .and_then(|i| elf.section_by_index(i).ok())
            .is_some_and(|sec| {
                !matches!(
                    sec.kind(),
                    SectionKind::UninitializedData | SectionKind::UninitializedTls
                )
            })
    };
    let mut out: Vec<Symbol> = elf
        .symbols()
        .filter(|s| s.is_definition() && s.size() > 0)
        .filter(|s| matches!(s.kind(), SymbolKind::Text | SymbolKind::Data))
        .filter(in_file)
        .filter_map(|s| {
            let raw = s.name().ok()?;
            let name = format!("{:#}", rustc_demangle::demangle(raw));
            Some(Symbol {
                krate: crate_of(&name),
                name,
                bytes: s.size(),
            })
        })
        .collect();
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
    Ok(out)
}

/// Bytes per crate, largest first.
pub fn per_crate(symbols: &[Symbol]) -> Vec<(String, u64)> {
    let mut map = std::collections::BTreeMap::<String, u64>::new();
    for s in symbols {
        *map.entry(s.krate.clone()).or_default() += s.bytes;
    }
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// The symbols that show `core::fmt`'s formatting machinery is linked in.
pub fn fmt_symbols(symbols: &[Symbol]) -> Vec<&Symbol> {
    symbols
        .iter()
        .filter(|s| s.name == "core::fmt::write" || s.name.starts_with("core::fmt::write::"))
        .collect()
}

fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64",
        Arch::Aarch64 => "aarch64",
    }
}

/// What the file size of an `arch` variant measures.
pub fn file_kind(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "stripped ELF (PVH)",
        Arch::Aarch64 => "flat Image (Linux arm64)",
    }
}

/// The budget column: `max_bytes` enforced, else `target_bytes` reported, else neither.
pub fn budget_cell(file: u64, max_bytes: Option<u64>, target_bytes: Option<u64>) -> String {
    match (max_bytes, target_bytes) {
        (Some(m), _) if file <= m => format!("<= {m} ({}): ok", kib(m)),
        (Some(m), _) => format!("<= {m} ({}): OVER by {} bytes", kib(m), file - m),
        (None, Some(t)) if file <= t => format!("target: <= {t} ({}): ok", kib(t)),
        (None, Some(t)) => format!(
            "target: <= {t} ({}): over by {} bytes (reported)",
            kib(t),
            file - t
        ),
        (None, None) => "report only".to_string(),
    }
}

fn kib(b: u64) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

pub fn run(args: &[String]) -> Result {
    let as_json = match args {
        [] => false,
        [a] if a == "--json" => true,
        _ => return Err("usage: cargo xtask size [--json]".into()),
    };
    let budget_path = root().join(BUDGET_FILE);
    let text = std::fs::read_to_string(&budget_path)
        .map_err(|e| format!("{}: {e}", budget_path.display()))?;
    let variants = parse_budget(&text)?;
    let defined = package_features()?;

    let mut results = Vec::new();
    let mut over = Vec::new();
    for v in &variants {
        if let Some(missing) = v.features.iter().find(|f| !defined.contains(f)) {
            if v.max_bytes.is_some() {
                over.push(format!(
                    "{}: has a budget but imds-unikernel has no feature `{missing}`",
                    v.name
                ));
            }
            results.push(json!({
                "name": v.name, "arch": arch_name(v.arch), "features": v.features,
                "max_bytes": v.max_bytes, "target_bytes": v.target_bytes,
                "skipped": format!("imds-unikernel has no feature `{missing}` (yet)"),
            }));
            continue;
        }
        let (image, symbols) = build_variant(v)?;
        let s = read_sizes(&image, &symbols)?;
        let syms = read_symbols(&symbols)?;
        let crates = per_crate(&syms);
        let fmt = fmt_symbols(&syms);
        // Both architectures' default image (the budget is enforced on x86 only).
        if v.features.is_empty() && !fmt.is_empty() {
            over.push(format!(
                "{}: core::fmt is linked in ({}): no formatting machinery in the default image",
                v.name,
                fmt.iter()
                    .map(|s| format!("{} {} B", s.name, s.bytes))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let within = v.max_bytes.map(|m| s.file <= m);
        if within == Some(false) {
            let m = v.max_bytes.unwrap_or(0);
            over.push(format!(
                "{}: {} bytes ({}), budget {} bytes ({}): {} bytes over",
                v.name,
                s.file,
                kib(s.file),
                m,
                kib(m),
                s.file - m
            ));
        }
        let sections: serde_json::Map<String, Value> = s
            .sections
            .iter()
            .map(|(n, b)| (n.clone(), json!(b)))
            .collect();
        results.push(json!({
            "name": v.name, "arch": arch_name(v.arch), "features": v.features,
            "max_bytes": v.max_bytes, "target_bytes": v.target_bytes,
            "image": image.display().to_string(),
            "file": file_kind(v.arch),
            "file_bytes": s.file, "sections": sections, "within_budget": within,
            "within_target": v.target_bytes.map(|t| s.file <= t),
            "core_fmt": !fmt.is_empty(),
            "crates": crates.iter().map(|(c, b)| json!({"crate": c, "bytes": b})).collect::<Vec<_>>(),
            "largest_symbols": syms.iter().take(TOP_SYMBOLS).map(|s| json!({"symbol": s.name, "crate": s.krate, "bytes": s.bytes})).collect::<Vec<_>>(),
        }));
    }

    let doc = json!({ "budget_file": BUDGET_FILE, "variants": results });
    let report = target_dir().join("bench/size.json");
    if let Some(dir) = report.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&report, serde_json::to_string_pretty(&doc).expect("json"))
        .map_err(|e| format!("{}: {e}", report.display()))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    } else {
        for r in &results {
            let Some(crates) = r["crates"].as_array() else {
                continue;
            };
            println!(
                "\n{}: bytes per crate (symbols of the unstripped build)",
                r["name"].as_str().unwrap_or("")
            );
            for c in crates {
                println!(
                    "  {:>8}  {}",
                    c["bytes"].as_u64().unwrap_or(0),
                    c["crate"].as_str().unwrap_or("")
                );
            }
            println!("  largest symbols:");
            for s in r["largest_symbols"].as_array().into_iter().flatten() {
                println!(
                    "  {:>8}  {}",
                    s["bytes"].as_u64().unwrap_or(0),
                    s["symbol"].as_str().unwrap_or("")
                );
            }
        }
        println!();
        println!("| variant | file | .text | .rodata | .data | .bss | budget | file is |");
        println!("|---|---:|---:|---:|---:|---:|---|---|");
        for r in &results {
            if let Some(why) = r["skipped"].as_str() {
                println!(
                    "| {} | skipped: {why} | | | | | | |",
                    r["name"].as_str().unwrap_or("")
                );
                continue;
            }
            let sec = |n: &str| {
                r["sections"][n]
                    .as_u64()
                    .map_or("-".to_string(), |b| b.to_string())
            };
            let file = r["file_bytes"].as_u64().unwrap_or(0);
            let budget = budget_cell(file, r["max_bytes"].as_u64(), r["target_bytes"].as_u64());
            let kind = r["file"].as_str().unwrap_or("");
            println!(
                "| {} | {} ({}) | {} | {} | {} | {} | {budget} | {kind} |",
                r["name"].as_str().unwrap_or(""),
                file,
                kib(file),
                sec(".text"),
                sec(".rodata"),
                sec(".data"),
                sec(".bss"),
            );
        }
        println!(
            "\n(bytes; file = what QEMU loads: the stripped ELF on x86_64, the flat Image on aarch64; sections from the ELF; .bss is not in the file; {})",
            report.display()
        );
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "over budget ({BUDGET_FILE}):\n  {}",
            over.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_file_parses() {
        let text = std::fs::read_to_string(root().join(BUDGET_FILE)).unwrap();
        let v = parse_budget(&text).unwrap();
        let issuer = v
            .iter()
            .find(|v| v.name == "issuer")
            .expect("issuer variant");
        assert!(issuer.features.is_empty());
        assert!(issuer.max_bytes.is_some());
        assert_eq!(issuer.arch, Arch::X86_64);
        // The RDRAND-less fallback is reported against the issuer's budget (not yet in it).
        let rng = v
            .iter()
            .find(|v| v.name == "issuer+virtio-rng")
            .expect("virtio-rng variant");
        assert_eq!(rng.features, ["virtio-rng"]);
        assert_eq!(rng.max_bytes, None);
        assert_eq!(rng.target_bytes, issuer.max_bytes);
        // The aarch64 variants have x86's budgets, enforced.
        for (arm, x86) in [
            ("issuer (aarch64)", "issuer"),
            ("broker (aarch64)", "broker"),
        ] {
            let arm = v.iter().find(|v| v.name == arm).expect("aarch64 variant");
            let x86 = v.iter().find(|v| v.name == x86).expect("x86 variant");
            assert_eq!(arm.arch, Arch::Aarch64);
            assert_eq!(arm.features, x86.features);
            assert_eq!(arm.max_bytes, x86.max_bytes);
            assert!(arm.max_bytes.is_some());
        }
    }

    #[test]
    fn budget_cells() {
        assert_eq!(budget_cell(10, Some(20), None), "<= 20 (0.0 KiB): ok");
        assert!(budget_cell(30, Some(20), None).contains("OVER by 10 bytes"));
        assert_eq!(
            budget_cell(2148, None, Some(1024)),
            "target: <= 1024 (1.0 KiB): over by 1124 bytes (reported)"
        );
        assert!(budget_cell(10, None, Some(20)).ends_with("ok"));
        assert_eq!(budget_cell(10, None, None), "report only");
    }

    #[test]
    fn budget_errors() {
        assert!(parse_budget("{}").is_err());
        assert!(parse_budget(r#"{"variants":[{"name":"x","max_bytes":"1"}]}"#).is_err());
        assert!(parse_budget(r#"{"variants":[{"name":"x","arch":"mips"}]}"#).is_err());
        assert!(parse_budget(r#"{"variants":[{"name":"x","target_bytes":true}]}"#).is_err());
        let v = parse_budget(r#"{"variants":[{"name":"x","features":["a"],"max_bytes":null}]}"#)
            .unwrap();
        assert_eq!(v[0].features, ["a"]);
        assert_eq!(v[0].max_bytes, None);
    }

    #[test]
    fn symbols_are_counted_per_crate() {
        for (name, krate) in [
            ("core::fmt::write", "core"),
            ("smoltcp::iface::interface::Interface::poll", "smoltcp"),
            (
                "<smoltcp::wire::ipv4::Address as core::fmt::Display>::fmt",
                "smoltcp",
            ),
            ("<&mut T as core::fmt::Write>::write_str", "[other]"),
            ("<imds_agent::http::Parser>::feed", "imds_agent"),
            ("imds_boot_main", "[other]"),
            ("memcpy", "[other]"),
        ] {
            assert_eq!(crate_of(name), krate, "{name}");
        }
        let sym = |name: &str, bytes| Symbol {
            name: name.into(),
            krate: crate_of(name),
            bytes,
        };
        let syms = [
            sym("core::fmt::write", 700),
            sym("core::str::from_utf8", 300),
            sym("smoltcp::f", 500),
        ];
        assert_eq!(
            per_crate(&syms),
            [("core".to_string(), 1000), ("smoltcp".to_string(), 500)]
        );
        assert_eq!(fmt_symbols(&syms).len(), 1);
        assert!(fmt_symbols(&syms[1..]).is_empty());
    }

    #[test]
    fn reads_own_symbols() {
        // The test binary is unstripped: it has symbols, and it formats.
        let syms = read_symbols(&std::env::current_exe().unwrap()).unwrap();
        assert!(syms.len() > 100);
        assert!(syms.windows(2).all(|w| w[0].bytes >= w[1].bytes));
        assert!(!fmt_symbols(&syms).is_empty());
    }

    #[test]
    fn reads_own_sections() {
        // Any ELF will do: the test binary itself.
        let me = std::env::current_exe().unwrap();
        let s = read_sizes(&me, &me).unwrap();
        assert!(s.file > 0);
        assert!(s.sections.iter().any(|(n, b)| n == ".text" && *b > 0));
    }
}

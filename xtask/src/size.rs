//! `cargo xtask size [--json]`: build each image variant listed in `qemu/size-budget.json`
//! (profile `image`: lto, `opt-level = "s"`, stripped) and print its file size and the sizes of
//! `.text`, `.rodata`, `.data` and `.bss`, read from the ELF. Fails when a variant is over its
//! `max_bytes` (a `null` budget is reported only). A variant whose cargo feature
//! `imds-unikernel` does not define (yet) is reported as skipped.
//!
//! Each variant's image is copied to `target/size/<name>`; the default image
//! (`target/x86_64-unknown-none/image/imds-unikernel`) is rebuilt last, so it is left as the
//! featureless build the tests and `cargo xtask run` use.

use object::{Object, ObjectSection};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use xtask::qemu;
use xtask::{root, target_dir};

type Result<T = ()> = std::result::Result<T, String>;

/// The budget file, relative to the workspace root.
pub const BUDGET_FILE: &str = "qemu/size-budget.json";
/// The sections reported.
pub const SECTIONS: [&str; 4] = [".text", ".rodata", ".data", ".bss"];

/// A variant from the budget file.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub features: Vec<String>,
    pub max_bytes: Option<u64>,
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
            let max_bytes = match &v["max_bytes"] {
                Value::Null => None,
                m => Some(
                    m.as_u64()
                        .ok_or_else(|| bad("max_bytes must be a number or null"))?,
                ),
            };
            Ok(Variant {
                name,
                features,
                max_bytes,
            })
        })
        .collect()
}

/// File size and section sizes of an ELF image.
pub fn read_sizes(image: &Path) -> Result<Sizes> {
    let data = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let elf = object::File::parse(&*data).map_err(|e| format!("{}: {e}", image.display()))?;
    let sections = SECTIONS
        .iter()
        .filter_map(|name| {
            elf.section_by_name(name)
                .map(|s| (name.to_string(), s.size()))
        })
        .collect();
    Ok(Sizes {
        file: data.len() as u64,
        sections,
    })
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

fn build_variant(v: &Variant) -> Result<PathBuf> {
    let mut c = qemu::build_command(true);
    if !v.features.is_empty() {
        c.args(["--features", &v.features.join(",")]);
    }
    let status = c
        .status()
        .map_err(|e| format!("{}: {e}", qemu::print_cmd(&c)))?;
    if !status.success() {
        return Err(format!("{} failed: {status}", qemu::print_cmd(&c)));
    }
    let dir = target_dir().join("size");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let copy = dir.join(&v.name);
    std::fs::copy(qemu::image_path(true), &copy).map_err(|e| format!("{}: {e}", copy.display()))?;
    Ok(copy)
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
    let mut variants = parse_budget(&text)?;
    // Featureless variants last: the default image path then holds the default build.
    variants.sort_by_key(|v| v.features.is_empty());
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
                "name": v.name, "features": v.features, "max_bytes": v.max_bytes,
                "skipped": format!("imds-unikernel has no feature `{missing}` (yet)"),
            }));
            continue;
        }
        let image = build_variant(v)?;
        let s = read_sizes(&image)?;
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
            "name": v.name, "features": v.features, "max_bytes": v.max_bytes,
            "image": image.display().to_string(),
            "file_bytes": s.file, "sections": sections, "within_budget": within,
        }));
    }

    if as_json {
        let doc = json!({ "budget_file": BUDGET_FILE, "variants": results });
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    } else {
        println!("| variant | file | .text | .rodata | .data | .bss | budget |");
        println!("|---|---:|---:|---:|---:|---:|---|");
        for r in &results {
            if let Some(why) = r["skipped"].as_str() {
                println!(
                    "| {} | skipped: {why} | | | | | |",
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
            let budget = match r["max_bytes"].as_u64() {
                None => "report only".to_string(),
                Some(m) if file <= m => format!("<= {m} ({}): ok", kib(m)),
                Some(m) => format!("<= {m} ({}): OVER by {} bytes", kib(m), file - m),
            };
            println!(
                "| {} | {} ({}) | {} | {} | {} | {} | {budget} |",
                r["name"].as_str().unwrap_or(""),
                file,
                kib(file),
                sec(".text"),
                sec(".rodata"),
                sec(".data"),
                sec(".bss"),
            );
        }
        println!("\n(bytes; file = the stripped ELF QEMU loads; .bss is not in the file)");
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
    }

    #[test]
    fn budget_errors() {
        assert!(parse_budget("{}").is_err());
        assert!(parse_budget(r#"{"variants":[{"name":"x","max_bytes":"1"}]}"#).is_err());
        let v = parse_budget(r#"{"variants":[{"name":"x","features":["a"],"max_bytes":null}]}"#)
            .unwrap();
        assert_eq!(v[0].features, ["a"]);
        assert_eq!(v[0].max_bytes, None);
    }

    #[test]
    fn reads_own_sections() {
        // Any ELF will do: the test binary itself.
        let s = read_sizes(&std::env::current_exe().unwrap()).unwrap();
        assert!(s.file > 0);
        assert!(s.sections.iter().any(|(n, b)| n == ".text" && *b > 0));
    }
}

//! Link the bare-metal image with the architecture's linker script: `linker.ld` on x86_64
//! (image at 1 MiB, PVH note first), `linker-aarch64.ld` on aarch64 (a Linux arm64 Image at
//! QEMU `virt`'s load address). Host builds of this crate are an empty `main` and get no extra
//! link arguments.

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=linker-aarch64.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let script = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
            Ok("aarch64") => "linker-aarch64.ld",
            _ => "linker.ld",
        };
        println!("cargo:rustc-link-arg-bins=-T{dir}/{script}");
        println!("cargo:rustc-link-arg-bins=-z");
        println!("cargo:rustc-link-arg-bins=max-page-size=4096");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}

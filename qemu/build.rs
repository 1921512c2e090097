//! Link the bare-metal image with the architecture's linker script: `linker.ld` on x86_64
//! (image at 1 MiB, PVH note first), `linker-aarch64.ld` on aarch64 (a Linux arm64 Image at
//! QEMU `virt`'s load address). Host builds of this crate are an empty `main` and get no extra
//! link arguments.

/// The aarch64 stack of an unoptimised build (`linker-aarch64.ld` has 1 MiB otherwise).
const DEBUG_STACK_SIZE: u32 = 8 << 20;

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=linker-aarch64.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let aarch64 = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("aarch64");
        let script = if aarch64 {
            "linker-aarch64.ld"
        } else {
            "linker.ld"
        };
        // Unoptimised code has far bigger frames (the config parser's exceed 1 MiB).
        if aarch64 && std::env::var("OPT_LEVEL").as_deref() == Ok("0") {
            println!("cargo:rustc-link-arg-bins=--defsym=STACK_SIZE={DEBUG_STACK_SIZE}");
        }
        println!("cargo:rustc-link-arg-bins=-T{dir}/{script}");
        println!("cargo:rustc-link-arg-bins=-z");
        println!("cargo:rustc-link-arg-bins=max-page-size=4096");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}

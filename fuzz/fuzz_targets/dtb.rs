//! `imds_hal::dtb` (the aarch64 image's device tree reader) on arbitrary bytes: every lookup
//! the image makes answers or says `None`; no panic, no endless walk; a window read from `reg`
//! comes from the node's `reg` property.
#![no_main]

use imds_hal::dtb::Dtb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(dtb) = Dtb::new(data) else {
        return;
    };
    // A node is at least 8 bytes of the structure block: the walk is bounded by the input.
    let mut nodes = 0;
    for node in dtb.nodes() {
        nodes += 1;
        assert!(nodes <= data.len() / 8 + 1, "more nodes than the input can hold");
        let _ = node.is_enabled() && node.is_compatible_with("virtio,mmio");
        let (address_cells, size_cells) = node.cells();
        let _ = (address_cells, size_cells);
        for i in 0..3 {
            if let Some((address, size)) = node.reg(i) {
                let reg = node.property("reg").expect("a window comes from `reg`");
                assert!(reg.len() >= 4 * (i + 1));
                let _ = (address, size);
            }
        }
        let _ = node.uint_property("linux,initrd-start");
        let _ = node.str_property("method");
    }
    let _ = dtb.root().map(|r| r.cells());
    let _ = dtb.chosen();
    let _ = dtb.find_compatible(&["arm,pl011", "qemu,fw-cfg-mmio"]);
});

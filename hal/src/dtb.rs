//! The flattened device tree (Devicetree Specification v0.4, chapter 5 "Flattened Devicetree
//! (DTB) Format"), read for the few lookups the aarch64 image makes: nodes in document order,
//! a node's properties, its `compatible` list and `status`, its `reg` windows (in its
//! parent's `#address-cells` / `#size-cells`).
//!
//! The image used the `fdt` crate for this: ~5 KB of the aarch64 image with the iterators and
//! `&str` conversions it brings (every name made a checked `&str`, paths split into
//! components), for half a dozen lookups. This reader compares bytes, allocates nothing, and
//! answers `None` (never panics) on a malformed tree; the tests compare it with the `fdt`
//! crate on QEMU `virt`'s device trees and run it over truncated and corrupted ones.

/// The header's magic number.
const MAGIC: u32 = 0xd00d_feed;
/// Structure block tokens.
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;

/// The largest device tree accepted: the arm64 boot protocol's limit ("must not exceed 2
/// megabytes in size", Linux `Documentation/arch/arm64/booting.rst`).
pub const MAX_SIZE: usize = 2 << 20;
/// The deepest node nesting followed (QEMU `virt` nests 3 deep); iteration stops at a deeper
/// node.
pub const MAX_DEPTH: usize = 16;
/// `#address-cells` and `#size-cells` of a node that does not give them (the specification's
/// defaults).
const DEFAULT_CELLS: (u32, u32) = (2, 1);

/// The big-endian `u32` at `at` of `b`.
fn be32(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// `at` rounded up to the next 4-byte boundary (tokens are 4-aligned).
fn align4(at: usize) -> Option<usize> {
    Some(at.checked_add(3)? & !3)
}

/// The bytes of `b` before its first NUL (`None` without one).
fn until_nul(b: &[u8]) -> Option<&[u8]> {
    let n = b.iter().position(|&c| c == 0)?;
    b.get(..n)
}

/// A device tree: its structure and strings blocks.
#[derive(Debug, Clone, Copy)]
pub struct Dtb<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Dtb<'a> {
    /// The size a device tree declares in its header (`totalsize`), from its first 8 bytes;
    /// `None` if they are not a device tree header or the size is over [`MAX_SIZE`].
    pub fn total_size(header: &[u8]) -> Option<usize> {
        if be32(header, 0)? != MAGIC {
            return None;
        }
        let size = usize::try_from(be32(header, 4)?).ok()?;
        (size <= MAX_SIZE).then_some(size)
    }

    /// The device tree in `blob`: `None` if the header is not one (magic, a version 17 tree
    /// or one compatible with it) or its blocks are not inside `blob` and its `totalsize`.
    pub fn new(blob: &'a [u8]) -> Option<Dtb<'a>> {
        let blob = blob.get(..Self::total_size(blob)?)?;
        let field = |at| be32(blob, at).and_then(|v| usize::try_from(v).ok());
        // version (20) at least 17, which has size_dt_struct; last_comp_version (24) at most 17.
        if field(20)? < 17 || field(24)? > 17 {
            return None;
        }
        let block = |offset: usize, size: usize| blob.get(offset..offset.checked_add(size)?);
        Some(Dtb {
            structs: block(field(8)?, field(36)?)?,
            strings: block(field(12)?, field(32)?)?,
        })
    }

    /// Every node, in document order (the root first).
    pub fn nodes(&self) -> Nodes<'a> {
        Nodes {
            dtb: *self,
            at: 0,
            depth: 0,
            cells: [DEFAULT_CELLS; MAX_DEPTH + 1],
        }
    }

    /// The root node.
    pub fn root(&self) -> Option<Node<'a>> {
        self.nodes().next()
    }

    /// The first node (document order) compatible with one of `with`, whatever its status.
    pub fn find_compatible(&self, with: &[&str]) -> Option<Node<'a>> {
        self.nodes()
            .find(|n| with.iter().any(|w| n.is_compatible_with(w)))
    }

    /// `/chosen`.
    pub fn chosen(&self) -> Option<Node<'a>> {
        self.nodes().find(|n| n.depth == 2 && n.name == b"chosen")
    }

    /// The name at `offset` of the strings block.
    fn string(&self, offset: usize) -> Option<&'a [u8]> {
        until_nul(self.strings.get(offset..)?)
    }
}

/// The nodes of a device tree in document order ([`Dtb::nodes`]); ends at the end of the
/// structure block, at anything malformed, or at a node deeper than [`MAX_DEPTH`].
#[derive(Debug, Clone)]
pub struct Nodes<'a> {
    dtb: Dtb<'a>,
    /// Offset of the next token in the structure block.
    at: usize,
    /// Depth of the last node begun and not ended (the root is 1).
    depth: usize,
    /// `(#address-cells, #size-cells)` of the open node at each depth (index 0: the defaults,
    /// for the root's own `reg`).
    cells: [(u32, u32); MAX_DEPTH + 1],
}

impl<'a> Iterator for Nodes<'a> {
    type Item = Node<'a>;

    fn next(&mut self) -> Option<Node<'a>> {
        let s = self.dtb.structs;
        loop {
            let token = be32(s, self.at)?;
            let after = self.at + 4;
            match token {
                BEGIN_NODE => {
                    let name = until_nul(s.get(after..)?)?;
                    let props = align4(after + name.len() + 1)?;
                    let depth = self.depth + 1;
                    let parent = *self.cells.get(depth - 1)?;
                    let node = Node {
                        dtb: self.dtb,
                        name,
                        depth,
                        props,
                        parent,
                    };
                    *self.cells.get_mut(depth)? = node.cells();
                    self.depth = depth;
                    self.at = props;
                    return Some(node);
                }
                END_NODE => {
                    self.depth = self.depth.checked_sub(1)?;
                    self.at = after;
                }
                PROP => {
                    let len = usize::try_from(be32(s, after)?).ok()?;
                    self.at = align4(after.checked_add(8 + len)?)?;
                }
                NOP => self.at = after,
                // FDT_END, or not a token.
                _ => return None,
            }
        }
    }
}

/// One node of a device tree.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    dtb: Dtb<'a>,
    name: &'a [u8],
    /// 1 for the root.
    depth: usize,
    /// Offset of its first property token in the structure block.
    props: usize,
    /// Its parent's `(#address-cells, #size-cells)`: how its `reg` is laid out.
    parent: (u32, u32),
}

impl<'a> Node<'a> {
    /// Its name, with the unit address (`virtio_mmio@a000000`); empty for the root.
    pub fn name(&self) -> &'a [u8] {
        self.name
    }

    /// The value of its property `name`.
    pub fn property(&self, name: &str) -> Option<&'a [u8]> {
        let s = self.dtb.structs;
        let mut at = self.props;
        loop {
            match be32(s, at)? {
                PROP => {
                    let len = usize::try_from(be32(s, at + 4)?).ok()?;
                    let offset = usize::try_from(be32(s, at + 8)?).ok()?;
                    let value = s.get(at + 12..(at + 12).checked_add(len)?)?;
                    if self.dtb.string(offset)? == name.as_bytes() {
                        return Some(value);
                    }
                    at = align4(at + 12 + len)?;
                }
                NOP => at += 4,
                // The first child or the end of the node: no more properties.
                _ => return None,
            }
        }
    }

    /// A string property up to its NUL (`status = "okay"`, `method = "hvc"`).
    pub fn str_property(&self, name: &str) -> Option<&'a [u8]> {
        until_nul(self.property(name)?)
    }

    /// A number property of one or two cells (`linux,initrd-start`).
    pub fn uint_property(&self, name: &str) -> Option<u64> {
        let v = self.property(name)?;
        match v.len() {
            4 => be32(v, 0).map(u64::from),
            8 => Some(u64::from(be32(v, 0)?) << 32 | u64::from(be32(v, 4)?)),
            _ => None,
        }
    }

    /// Whether its `compatible` list holds `with`.
    pub fn is_compatible_with(&self, with: &str) -> bool {
        self.property("compatible").is_some_and(|list| {
            list.split(|&b| b == 0)
                .any(|entry| entry == with.as_bytes())
        })
    }

    /// Whether it is enabled: no `status`, or `"okay"` (`"ok"`, the older spelling).
    pub fn is_enabled(&self) -> bool {
        self.str_property("status")
            .is_none_or(|s| s == b"okay" || s == b"ok")
    }

    /// Its own `(#address-cells, #size-cells)`, the layout of its children's `reg` (defaults
    /// 2 and 1).
    pub fn cells(&self) -> (u32, u32) {
        let cells = |name, default| {
            self.property(name)
                .filter(|v| v.len() == 4)
                .and_then(|v| be32(v, 0))
                .unwrap_or(default)
        };
        (
            cells("#address-cells", DEFAULT_CELLS.0),
            cells("#size-cells", DEFAULT_CELLS.1),
        )
    }

    /// Window `i` of its `reg`, `(address, size)`, in its parent's cells (addresses of one or
    /// two cells, sizes of zero to two; anything else: `None`).
    pub fn reg(&self, i: usize) -> Option<(u64, u64)> {
        let (address_cells, size_cells) = (self.parent.0 as usize, self.parent.1 as usize);
        if !(1..=2).contains(&address_cells) || size_cells > 2 {
            return None;
        }
        let entry = 4 * (address_cells + size_cells);
        let e = self.property("reg")?.chunks_exact(entry).nth(i)?;
        let number = |cells: &[u8]| {
            cells.chunks_exact(4).fold(0u64, |acc, c| {
                acc << 32 | u64::from(be32(c, 0).unwrap_or(0))
            })
        };
        let (address, size) = e.split_at(4 * address_cells);
        Some((number(address), number(size)))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// `qemu-system-aarch64 -M virt,dumpdtb=... -cpu max -m 64` (QEMU 7.2; GICv2, no PCI
    /// devices), cut to its blocks (QEMU pads `totalsize` to 1 MiB).
    const VIRT_GICV2: &[u8] = include_bytes!("../testdata/virt-gicv2.dtb");
    /// The same with `gic-version=3`, a `virtio-net-pci`, a `virtio-rng-device`, `-kernel`
    /// and `-initrd` (`/chosen` has `linux,initrd-start` / `-end`).
    const VIRT_GICV3_PCIE: &[u8] = include_bytes!("../testdata/virt-gicv3-pcie.dtb");

    fn both() -> [(&'static str, &'static [u8]); 2] {
        [("gicv2", VIRT_GICV2), ("gicv3-pcie", VIRT_GICV3_PCIE)]
    }

    #[test]
    fn every_node_and_property_as_the_fdt_crate_reads_them() {
        for (name, blob) in both() {
            let theirs = fdt::Fdt::new(blob).unwrap();
            let ours = Dtb::new(blob).unwrap();
            let their_nodes: Vec<_> = theirs.all_nodes().collect();
            let our_nodes: Vec<_> = ours.nodes().collect();
            assert_eq!(their_nodes.len(), our_nodes.len(), "{name}");
            assert!(our_nodes.len() > 20, "{name}: {}", our_nodes.len());
            for (t, o) in their_nodes.iter().zip(&our_nodes) {
                // fdt names the root "/".
                let their_name = if t.name == "/" { "" } else { t.name };
                assert_eq!(their_name.as_bytes(), o.name(), "{name}");
                let mut props = 0;
                for p in t.properties() {
                    assert_eq!(
                        o.property(p.name),
                        Some(p.value),
                        "{name}: {} {}",
                        t.name,
                        p.name
                    );
                    props += 1;
                }
                assert!(o.property("no-such-property").is_none());
                let compatible: Vec<&str> = t
                    .compatible()
                    .map(|c| c.all().collect())
                    .unwrap_or_default();
                for c in &compatible {
                    assert!(o.is_compatible_with(c), "{name}: {} {c}", t.name);
                }
                assert!(!o.is_compatible_with("virtio"), "a prefix is not an entry");
                let cells = t.cell_sizes();
                assert_eq!(
                    o.cells(),
                    (cells.address_cells as u32, cells.size_cells as u32)
                );
                if let Some(regs) = t.reg() {
                    let theirs: Vec<_> = regs
                        .map(|r| (r.starting_address as u64, r.size.unwrap_or(0) as u64))
                        .collect();
                    let ours: Vec<_> = (0..).map_while(|i| o.reg(i)).collect();
                    assert_eq!(theirs, ours, "{name}: {}", t.name);
                }
                let status = t.property("status").and_then(|p| p.as_str());
                assert_eq!(
                    o.is_enabled(),
                    status.is_none_or(|s| s == "okay" || s == "ok")
                );
                let _ = props;
            }
        }
    }

    #[test]
    fn the_lookups_the_image_makes() {
        for (name, blob) in both() {
            let theirs = fdt::Fdt::new(blob).unwrap();
            let ours = Dtb::new(blob).unwrap();
            for with in [
                &["arm,pl011"][..],
                &["arm,pl031"],
                &["qemu,fw-cfg-mmio"],
                &["arm,psci-1.0", "arm,psci-0.2", "arm,psci"],
                &["arm,gic-v3"],
                &["arm,cortex-a15-gic", "arm,gic-400"],
                &["pci-host-ecam-generic"],
                &["no,such-device"],
            ] {
                let t = theirs.find_compatible(with);
                let o = ours.find_compatible(with);
                assert_eq!(
                    t.map(|n| n.name.as_bytes()),
                    o.map(|n| n.name()),
                    "{name}: {with:?}"
                );
                if let (Some(t), Some(o)) = (t, o) {
                    let first = t.reg().and_then(|mut r| r.next());
                    let first =
                        first.map(|r| (r.starting_address as u64, r.size.unwrap_or(0) as u64));
                    assert_eq!(first, o.reg(0), "{name}: {with:?}");
                }
            }
            let psci = ours.find_compatible(&["arm,psci-1.0"]).unwrap();
            assert_eq!(psci.str_property("method"), Some(&b"hvc"[..]), "{name}");
            let virtio: Vec<_> = ours
                .nodes()
                .filter(|n| n.is_compatible_with("virtio,mmio") && n.is_enabled())
                .filter_map(|n| n.reg(0))
                .collect();
            assert_eq!(virtio.len(), 32, "{name}");
            assert_eq!(virtio[0], (0x0a00_0000, 0x200), "{name}");
            assert_eq!(ours.root().unwrap().cells(), (2, 2), "{name}");
            let chosen = ours.chosen().unwrap();
            let their_chosen = theirs.find_node("/chosen").unwrap();
            for p in ["linux,initrd-start", "linux,initrd-end"] {
                assert_eq!(
                    chosen.uint_property(p),
                    their_chosen
                        .property(p)
                        .and_then(|v| v.as_usize())
                        .map(|v| v as u64),
                    "{name}: {p}"
                );
            }
        }
        let with_initrd = Dtb::new(VIRT_GICV3_PCIE).unwrap().chosen().unwrap();
        assert!(
            with_initrd.uint_property("linux,initrd-end")
                > with_initrd.uint_property("linux,initrd-start")
        );
        let pcie = Dtb::new(VIRT_GICV3_PCIE)
            .unwrap()
            .find_compatible(&["pci-host-ecam-generic"])
            .unwrap();
        assert_eq!(pcie.cells(), (3, 2));
    }

    #[test]
    fn not_a_device_tree() {
        assert!(Dtb::new(&[]).is_none());
        assert!(Dtb::new(&VIRT_GICV2[..7]).is_none());
        assert!(
            Dtb::new(&VIRT_GICV2[..VIRT_GICV2.len() - 8]).is_none(),
            "shorter than totalsize"
        );
        let mut b = VIRT_GICV2.to_vec();
        b[0] ^= 1;
        assert!(Dtb::new(&b).is_none(), "magic");
        let mut b = VIRT_GICV2.to_vec();
        b[4..8].copy_from_slice(&(MAX_SIZE as u32 + 8).to_be_bytes());
        assert!(Dtb::total_size(&b).is_none(), "over 2 MiB");
        let mut b = VIRT_GICV2.to_vec();
        b[24..28].copy_from_slice(&18u32.to_be_bytes());
        assert!(Dtb::new(&b).is_none(), "last_comp_version 18");
    }

    /// Every lookup over single-byte changes of the structure and strings blocks (each byte
    /// flipped two ways) and over truncations: answers or `None`, never a panic or an endless
    /// loop.
    #[test]
    fn a_damaged_tree_never_panics() {
        fn all_lookups(blob: &[u8]) -> usize {
            let Some(d) = Dtb::new(blob) else { return 0 };
            let mut n = 0;
            for node in d.nodes().take(10_000) {
                n += usize::from(node.is_enabled() && node.is_compatible_with("virtio,mmio"));
                n += node.reg(0).map_or(0, |r| r.0 as usize & 1);
                n += node.reg(1).map_or(0, |r| r.1 as usize & 1);
                n += node
                    .uint_property("linux,initrd-start")
                    .map_or(0, |v| v as usize & 1);
                n += node.cells().0 as usize & 1;
            }
            n + d.chosen().map_or(0, |c| c.name().len())
                + d.find_compatible(&["arm,pl011"]).map_or(0, |_| 1)
        }
        let blob = VIRT_GICV3_PCIE;
        assert!(all_lookups(blob) > 0);
        let mut b = blob.to_vec();
        for at in 40..b.len() {
            for x in [0x01, 0xff] {
                b[at] ^= x;
                all_lookups(&b);
                b[at] ^= x;
            }
        }
        for len in (0..blob.len()).filter(|l| l % 4 == 0 || *l < 64) {
            let mut b = blob[..len].to_vec();
            if len >= 8 {
                b[4..8].copy_from_slice(&(len as u32).to_be_bytes());
            }
            all_lookups(&b);
        }
    }
}

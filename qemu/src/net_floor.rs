//! The network floor image (cargo feature `net-floor`; `cargo xtask bench boot` builds and times
//! it, nothing ships it): the same boot code, virtio-net driver and smoltcp as the agent's
//! image, and nothing else. No config is read, the TSC is not calibrated, no key is loaded and
//! no token is minted: the image takes an address (by DHCP; or, when the config document names a
//! `network`, QEMU user networking's static one, [`STATIC_ADDRESS`]: the document is searched for
//! that word, not parsed), prints a ready line and answers every HTTP request on port 80 with
//! the same `200` and an empty JSON object.
//!
//! What it measures: under TCG most of a boot is QEMU translating the code that runs for the
//! first time, so the time this image takes from QEMU's spawn to its first answer is the least
//! any image built on these crates can take, whatever the agent does. Its ratio over the floor
//! kernel is the bound the boot target of the agent's image is up against.

use imds_hal::text::Text;
use imds_hal::Clock;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

use crate::arch::{self, exit};
use crate::{exit_code, nap};

/// Listening sockets: a closing connection does not leave the port without a listener.
const LISTENERS: usize = 2;
/// Receive and send buffer of each listener (a token request's head fits).
const BUFFER: usize = 2048;
/// The address taken when the config has a `network` section (the bench's static setup): QEMU
/// user networking's guest address, prefix length and gateway.
const STATIC_ADDRESS: ([u8; 4], u8, [u8; 4]) = ([10, 0, 2, 15], 24, [10, 0, 2, 2]);
/// How much of the config document is searched for `"network"`.
const CONFIG_SEARCHED: usize = 8192;
/// The answer to every request.
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";

/// Boot on from the started clock: NIC, address, answers, forever.
pub fn run(clock: arch::ClockStart, log: &mut arch::Console) -> ! {
    let clock = arch::clock_uncalibrated(clock);
    let mut doc = [0u8; CONFIG_SEARCHED];
    let static_address = arch::test_file(imds_hal::fw_cfg::CONFIG_FILE, &mut doc)
        .is_ok_and(|d| d.windows(9).any(|w| w == b"\"network\""));
    let Ok(mut nic) = arch::nic() else {
        log.put("imds-agent: fatal: network").end();
        exit(exit_code::NIC);
    };
    log.put("imds-agent: virtio-net up (")
        .dec(clock.monotonic_us() / 1000)
        .put(" ms since boot; net-floor image)")
        .end();
    let timer = arch::idle(&clock);
    let now = || Instant::from_micros(clock.monotonic_us() as i64);

    let mac = nic.mac();
    let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    let mut iface = Interface::new(config, &mut nic, now());
    let mut storage = [SocketStorage::EMPTY; 1 + LISTENERS];
    let mut buffers = [[[0u8; BUFFER]; 2]; LISTENERS];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let dhcp = if static_address {
        let (address, prefix_len, gateway) = STATIC_ADDRESS;
        let address = Ipv4Address::from_octets(address);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(address, prefix_len)));
        });
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::from_octets(gateway));
        ready(log, address.octets());
        None
    } else {
        Some(sockets.add(dhcpv4::Socket::new()))
    };
    let mut listeners = [SocketHandle::default(); LISTENERS];
    for (handle, [rx, tx]) in listeners.iter_mut().zip(&mut buffers) {
        *handle = sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx[..]),
            tcp::SocketBuffer::new(&mut tx[..]),
        ));
    }

    let mut last_busy_us = clock.monotonic_us();
    loop {
        let mut busy = iface.poll(now(), &mut nic, &mut sockets) != PollResult::None;
        if let Some(dhcpv4::Event::Configured(lease)) =
            dhcp.and_then(|h| sockets.get_mut::<dhcpv4::Socket>(h).poll())
        {
            iface.update_ip_addrs(|addrs| {
                addrs.clear();
                let _ = addrs.push(IpCidr::Ipv4(lease.address));
            });
            if let Some(router) = lease.router {
                let _ = iface.routes_mut().add_default_ipv4_route(router);
            }
            ready(log, lease.address.address().octets());
        }
        for &handle in &listeners {
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            if !socket.is_open() {
                let _ = socket.listen(80);
            }
            if socket.can_recv() && head_complete(socket) {
                let _ = socket.recv(|b| (b.len(), ()));
                let _ = socket.send_slice(ANSWER);
                socket.close();
                busy = true;
            }
        }
        let now_us = clock.monotonic_us();
        if busy {
            last_busy_us = now_us;
            continue;
        }
        let next = iface.poll_delay(now(), &sockets);
        nap::when_quiet(timer.as_ref(), now_us, last_busy_us, next);
    }
}

/// The ready line (the bench sends its request when it reads it).
fn ready(log: &mut arch::Console, address: [u8; 4]) {
    log.put("imds-agent: ready: http://")
        .ipv4(address)
        .put("/ (net-floor image: one fixed answer, no agent)")
        .end();
}

/// Whether the socket's receive buffer holds a whole request head (ends with an empty line);
/// a head that fills the buffer counts as whole.
fn head_complete(socket: &mut tcp::Socket<'_>) -> bool {
    socket
        .peek(BUFFER)
        .is_ok_and(|b| b.len() == BUFFER || b.windows(4).any(|w| w == b"\r\n\r\n"))
}

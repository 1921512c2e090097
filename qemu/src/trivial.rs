//! TEMPORARY: DHCP + a fixed HTTP 200 on port 80, to prove the NIC until `imds_agent::net` lands.

use core::fmt::Write;

use imds_agent::config::Config;
use imds_hal::x86_64::rdrand::Rdrand;
use imds_hal::x86_64::serial::Serial;
use imds_hal::x86_64::virtio_net::VirtioNet;
use imds_hal::{Clock, Entropy};
use smoltcp::iface::{Interface, SocketSet, SocketStorage};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address, Ipv4Cidr};

const N: usize = 4;
static mut RX: [[u8; 2048]; N] = [[0; 2048]; N];
static mut TX: [[u8; 2048]; N] = [[0; 2048]; N];

pub fn serve(
    mut nic: VirtioNet,
    clock: &impl Clock,
    rng: &mut Rdrand,
    _config: &Config,
    log: &mut Serial,
) -> ! {
    let now = || Instant::from_micros(clock.monotonic_us() as i64);
    let mut seed = [0u8; 8];
    let _ = rng.fill(&mut seed);
    let mut cfg = smoltcp::iface::Config::new(EthernetAddress(nic.mac()).into());
    cfg.random_seed = u64::from_le_bytes(seed);
    let mut iface = Interface::new(cfg, &mut nic, now());
    let mut storage = [SocketStorage::EMPTY; N + 1];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let dhcp = sockets.add(dhcpv4::Socket::new());
    // SAFETY: called once; these statics are referenced nowhere else.
    let (rx, tx) = unsafe { (&mut *(&raw mut RX), &mut *(&raw mut TX)) };
    let mut handles = heapless_handles();
    for (i, (r, t)) in rx.iter_mut().zip(tx.iter_mut()).enumerate() {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(&mut r[..]),
            tcp::SocketBuffer::new(&mut t[..]),
        );
        let _ = s.listen(80);
        handles[i] = Some(sockets.add(s));
    }
    loop {
        iface.poll(now(), &mut nic, &mut sockets);
        if let Some(ev) = sockets.get_mut::<dhcpv4::Socket>(dhcp).poll() {
            if let dhcpv4::Event::Configured(c) = ev {
                let _ = writeln!(
                    log,
                    "imds-agent: DHCP address {} ({} ms since boot)",
                    c.address,
                    clock.monotonic_us() / 1000
                );
                iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(c.address));
                    let _ = a.push(IpCidr::Ipv4(Ipv4Cidr::new(
                        Ipv4Address::new(169, 254, 169, 254),
                        32,
                    )));
                });
                if let Some(r) = c.router {
                    let _ = iface.routes_mut().add_default_ipv4_route(r);
                }
            }
        }
        for h in handles.iter().flatten() {
            let s = sockets.get_mut::<tcp::Socket>(*h);
            if s.can_recv() {
                let _ = s.recv(|b| (b.len(), ()));
                let _ = s.send_slice(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                );
                s.close();
            }
            if !s.is_open() {
                let _ = s.listen(80);
            }
        }
    }
}

fn heapless_handles() -> [Option<smoltcp::iface::SocketHandle>; N] {
    [None; N]
}

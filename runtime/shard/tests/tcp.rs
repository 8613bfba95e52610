//! Sockets as the servers bind, accept and connect them, on both drivers.

use std::os::fd::AsRawFd;

use shard::io::{bind_reuseport, run, Driver, TcpListener, TcpStream};

fn nodelay(fd: i32) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) into a c_int owned here, with its size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
    v != 0
}

/// The accept paths set no socket options of their own: an accepted
/// connection must come with Nagle's algorithm off already.
#[test]
fn accepted_connections_inherit_tcp_nodelay_on_both_drivers() {
    for d in [Driver::Uring, Driver::Epoll] {
        run(d, async {
            let std_l = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
            let l = TcpListener::from_std(std_l).unwrap();
            let addr = l.local_addr().unwrap();
            let client = tokio::task::spawn_local(async move { TcpStream::connect(addr).await });
            let (s, _) = l.accept().await.unwrap();
            assert!(
                nodelay(s.as_raw_fd()),
                "{d:?}: accepted socket has Nagle on"
            );
            drop(client.await.unwrap().unwrap());
        });
    }
}

#[test]
fn tcp_echo_both_drivers() {
    for d in [Driver::Uring, Driver::Epoll] {
        run(d, async {
            let std_l = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
            let l = TcpListener::from_std(std_l).unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::task::spawn_local(async move {
                let (s, _) = l.accept().await.unwrap();
                let mut buf = Vec::with_capacity(64);
                loop {
                    let (r, b) = s.read(buf).await;
                    buf = b;
                    if r.unwrap() == 0 || buf.ends_with(b"\n") {
                        break;
                    }
                }
                let (r, _) = s.write_all(buf).await;
                r.unwrap();
            });
            let c = TcpStream::connect(addr).await.unwrap();
            assert_eq!(c.peer_addr().unwrap(), addr);
            let (r, _) = c.write_all(b"ping\n".to_vec()).await;
            r.unwrap();
            let (r, buf) = c.read(Vec::with_capacity(64)).await;
            assert_eq!(r.unwrap(), 5);
            assert_eq!(&buf, b"ping\n");
            server.await.unwrap();
        });
    }
}

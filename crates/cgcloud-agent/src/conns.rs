//! Answering a listener's connections, each in a thread of its own and at most so many at once
//! (the rest wait in the kernel's backlog): the scale socket and the leader's member list.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Accepts connections with `accept`, forever, in a thread of its own, and runs `answer` on
/// each in a thread of its own, at most `max` of them at once. A failed accept (e.g. out of
/// file descriptors) is retried after a pause.
pub fn serve_each<S: Send + 'static>(
    mut accept: impl FnMut() -> std::io::Result<S> + Send + 'static,
    max: usize,
    answer: impl Fn(S) + Send + Sync + 'static,
) {
    let answer = Arc::new(answer);
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || loop {
        let stream = match accept() {
            Ok(stream) => stream,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        while busy.load(Ordering::SeqCst) >= max {
            std::thread::sleep(Duration::from_millis(20));
        }
        busy.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(busy.clone());
        let answer = answer.clone();
        std::thread::spawn(move || {
            let _slot = slot;
            answer(stream);
        });
    });
}

/// A connection's place among the `max`, given back when its thread ends, a panic included.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn every_connection_is_answered_and_never_more_than_max_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, m) = (now.clone(), most.clone());
        serve_each(
            move || listener.accept().map(|(s, _)| s),
            2,
            move |mut s: TcpStream| {
                let at_once = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(at_once, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
                n.fetch_sub(1, Ordering::SeqCst);
                if at_once == 1 {
                    // A panicking answer gives its place back too.
                    let _ = s.write_all(b"ok");
                    panic!("an answer that panics");
                }
                let _ = s.write_all(b"ok");
            },
        );
        let clients: Vec<_> = (0..6)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    // A place never given back would leave this client waiting: fail instead.
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut got = String::new();
                    s.read_to_string(&mut got).unwrap();
                    got
                })
            })
            .collect();
        for c in clients {
            assert_eq!(c.join().unwrap(), "ok");
        }
        assert_eq!(most.load(Ordering::SeqCst), 2, "two at once, never more");
    }
}

//! A stdio child's stdin: each message one line, in the order sent, never interleaved.
//!
//! A line goes into the pipe straight from the task that sends it when nothing waits before
//! it and the pipe has room (the usual case: a child reads what it is sent), with no hand-off
//! to another task. Otherwise it waits in a queue that one writer task empties as the child
//! reads. What waits is bounded: once more than `max-line-mib` waits unread, further lines
//! are refused ([`Refused::NotReading`]) rather than held for a child that stopped reading.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, Weak};

use tokio::net::unix::pipe;
use tokio::process::ChildStdin;
use tokio::sync::Notify;

/// Why a line was not taken.
#[derive(Debug)]
pub(super) enum Refused {
    /// The pipe is closed: the child is gone.
    Closed,
    /// This many bytes wait unread already.
    NotReading { waiting: usize },
}

/// The write end of a child's stdin.
pub(super) struct Stdin {
    shared: Arc<Shared>,
    /// Wakes the writer task when a line is queued, or when the link is dropped.
    wake: Arc<Notify>,
    /// Most bytes that may wait unread (one line is always taken when nothing waits).
    max_waiting: usize,
}

struct Shared {
    pipe: pipe::Sender,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<Vec<u8>>,
    /// Bytes in `lines` and in the line the writer task is writing: while any wait, a new
    /// line must queue behind them.
    waiting: usize,
    closed: bool,
}

impl Stdin {
    /// Takes over `stdin` and starts its writer task.
    pub(super) fn new(stdin: ChildStdin, max_waiting: usize) -> io::Result<Stdin> {
        let pipe = pipe::Sender::from_owned_fd(stdin.into_owned_fd()?)?;
        let shared = Arc::new(Shared {
            pipe,
            queue: Mutex::default(),
        });
        let wake = Arc::new(Notify::new());
        tokio::spawn(write_queued(Arc::downgrade(&shared), wake.clone()));
        Ok(Stdin {
            shared,
            wake,
            max_waiting,
        })
    }

    /// Most bytes that may wait unread.
    pub(super) fn max_waiting(&self) -> usize {
        self.max_waiting
    }

    /// Sends `message` and its newline.
    pub(super) fn send(&self, message: Vec<u8>) -> Result<(), Refused> {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.closed {
            return Err(Refused::Closed);
        }
        let mut written = 0;
        if queue.waiting == 0 {
            // Nothing before it: straight into the pipe, as far as it has room.
            let total = message.len() + 1;
            let slices = [IoSlice::new(&message), IoSlice::new(b"\n")];
            match self.shared.pipe.try_write_vectored(&slices) {
                Ok(n) if n == total => return Ok(()),
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    queue.closed = true;
                    return Err(Refused::Closed);
                }
            }
        } else if queue.waiting + message.len() + 1 > self.max_waiting {
            return Err(Refused::NotReading {
                waiting: queue.waiting,
            });
        }
        // The rest waits for the writer task.
        let mut line = message;
        line.push(b'\n');
        let rest = if written == 0 {
            line
        } else {
            line.split_off(written)
        };
        queue.waiting += rest.len();
        queue.lines.push_back(rest);
        drop(queue);
        self.wake.notify_one();
        Ok(())
    }
}

impl Drop for Stdin {
    fn drop(&mut self) {
        // The writer task holds only a weak reference: wake it so it sees the link is gone.
        self.wake.notify_one();
    }
}

/// The writer task: writes queued lines in order as the child reads them. It ends when the
/// link is dropped or the pipe breaks.
async fn write_queued(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let next = s
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lines
            .pop_front();
        let Some(line) = next else {
            drop(s);
            wake.notified().await;
            continue;
        };
        let result = write_all(&s.pipe, &line).await;
        let mut queue = s.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.waiting -= line.len();
        if result.is_err() {
            queue.closed = true;
            return;
        }
    }
}

async fn write_all(pipe: &pipe::Sender, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        pipe.writable().await?;
        match pipe.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use tokio::io::AsyncReadExt as _;
    use tokio::process::{Child, Command};

    use super::*;

    fn child(program: &str, args: &[&str]) -> Child {
        Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    #[tokio::test]
    async fn lines_arrive_whole_and_in_order_whether_the_pipe_has_room_or_not() {
        let mut cat = child("cat", &[]);
        let stdin = Stdin::new(cat.stdin.take().unwrap(), 64 << 20).unwrap();
        let mut stdout = cat.stdout.take().unwrap();
        // Small lines go straight into the pipe; the 1 MB ones fill it, so what follows
        // them queues behind.
        let mut sent = Vec::new();
        for i in 0..200 {
            let line = if i % 50 == 7 {
                format!("{i}:{}", "x".repeat(1 << 20))
            } else {
                format!("{i}")
            };
            stdin.send(line.clone().into_bytes()).unwrap();
            sent.push(line);
        }
        let expected = sent.join("\n") + "\n";
        let mut got = vec![0; expected.len()];
        stdout.read_exact(&mut got).await.unwrap();
        assert!(got == expected.as_bytes(), "lines reordered or cut");
    }

    #[tokio::test]
    async fn a_child_that_does_not_read_is_sent_at_most_the_bound() {
        let mut deaf = child("sleep", &["30"]);
        let stdin = Stdin::new(deaf.stdin.take().unwrap(), 1 << 20).unwrap();
        // One line is taken whatever its size when nothing waits: the pipe takes 64 KiB of
        // it, the rest waits.
        stdin.send(vec![b'x'; 2 << 20]).unwrap();
        match stdin.send(b"more".to_vec()) {
            Err(Refused::NotReading { waiting }) => assert!(waiting > 1 << 20, "{waiting}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_child_gone_refuses_the_next_line() {
        let mut gone = child("true", &[]);
        let stdin = Stdin::new(gone.stdin.take().unwrap(), 1 << 20).unwrap();
        gone.wait().await.unwrap();
        // The first write after the exit breaks the pipe; the line after it is refused.
        let _ = stdin.send(b"hello".to_vec());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(matches!(
            stdin.send(b"again".to_vec()),
            Err(Refused::Closed)
        ));
    }
}

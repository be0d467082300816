//! A log file or standard error, written without ever waiting. A LOG_FILE is opened O_NONBLOCK
//! (a FIFO without a reader then fails to open instead of blocking, and is opened again at the
//! next line). Standard error belongs to the MTA and its O_NONBLOCK flag is shared with the whole
//! process, so it is never changed: a socket gets send(2) with MSG_DONTWAIT; a pipe or terminal
//! is opened anew through /proc/self/fd/2, a description of our own that can be non-blocking;
//! failing that, a pipe is written only after poll(2) says it has room, at most PIPE_BUF bytes at
//! a time, which the kernel then takes without waiting.
//!
//! A pipe is always polled before a write: writing to one whose reader has gone raises SIGPIPE,
//! which kills an MTA that keeps its default action, and the library must not touch the signal
//! mask (see tests/abi_abuse.rs).

use super::writer::Destination;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

/// Where a handle's log goes.
pub enum Place {
    Stderr,
    File(PathBuf),
}

/// An open descriptor for a `Place`, made on first use and again after its reader went away.
pub struct Fd {
    place: Place,
    open: Option<Open>,
}

enum Open {
    /// A descriptor of our own, non-blocking.
    Own { file: File, pipe: bool },
    /// Standard error is a socket (a journal stream): send(2) with MSG_DONTWAIT, and
    /// MSG_NOSIGNAL for a peer that has gone.
    Socket(socket2::Socket),
    /// A copy of standard error that stays blocking, as the MTA set it: a pipe is polled first.
    Shared { file: File, pipe: bool },
}

impl Fd {
    pub fn new(place: Place) -> Fd {
        Fd { place, open: None }
    }

    /// Opens the place now, so that a LOG_FILE that cannot be opened is known at once. A FIFO
    /// without a reader is no error: it is tried again at each line.
    pub fn open_now(&mut self) -> io::Result<()> {
        match self.open() {
            Err(e) if is_no_reader(&e) => Ok(()),
            r => r,
        }
    }

    fn open(&mut self) -> io::Result<()> {
        if self.open.is_none() {
            self.open = Some(match &self.place {
                Place::File(path) => open_file(path)?,
                Place::Stderr => open_stderr()?,
            });
        }
        Ok(())
    }

    fn write_open(open: &mut Open, buf: &[u8]) -> io::Result<usize> {
        match open {
            Open::Own { file, pipe } => {
                if *pipe {
                    ready(file.as_fd())?;
                }
                file.write(buf)
            }
            Open::Socket(s) => s.send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL),
            Open::Shared { file, pipe: true } => {
                ready(file.as_fd())?;
                file.write(&buf[..buf.len().min(libc::PIPE_BUF)])
            }
            Open::Shared { file, pipe: false } => file.write(buf),
        }
    }
}

impl Destination for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.open().and_then(|()| match &mut self.open {
            Some(open) => Fd::write_open(open, buf),
            None => Err(no_reader()),
        });
        if let Err(e) = &result {
            if is_no_reader(e) {
                // Opened again at the next line: a FIFO may have a new reader by then.
                self.open = None;
            }
        }
        result.map_err(reason)
    }
}

fn open_file(path: &PathBuf) -> io::Result<Open> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let pipe = file.metadata()?.file_type().is_fifo();
    Ok(Open::Own { file, pipe })
}

fn open_stderr() -> io::Result<Open> {
    let copy = File::from(io::stderr().as_fd().try_clone_to_owned()?);
    let kind = copy.metadata()?.file_type();
    if kind.is_socket() {
        return Ok(Open::Socket(socket2::Socket::from(OwnedFd::from(copy))));
    }
    let pipe = kind.is_fifo();
    if pipe || kind.is_char_device() {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open("/proc/self/fd/2")
        {
            Ok(file) => return Ok(Open::Own { file, pipe }),
            Err(e) if is_no_reader(&e) => return Err(e),
            // No /proc: the shared descriptor, polled.
            Err(_) => {}
        }
    }
    Ok(Open::Shared { file: copy, pipe })
}

/// Whether a pipe has a reader and room for PIPE_BUF bytes, without waiting.
fn ready(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1, timeout 0 (poll returns at once).
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if p.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
        return Err(no_reader());
    }
    if p.revents & libc::POLLOUT == 0 {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(())
}

fn no_reader() -> io::Error {
    io::Error::from_raw_os_error(libc::EPIPE)
}

/// A FIFO without a reader (ENXIO at open), a pipe or socket whose reader has gone.
fn is_no_reader(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENXIO | libc::EPIPE | libc::ECONNRESET)
    )
}

/// The error with a text for the notice line: the OS's own, but for the two that mean a reader
/// is missing or slow.
fn reason(e: io::Error) -> io::Error {
    if is_no_reader(&e) {
        io::Error::new(io::ErrorKind::BrokenPipe, "no reader")
    } else if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::WouldBlock,
            "full: its reader does not keep up",
        )
    } else {
        e
    }
}

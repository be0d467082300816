//! A program the tests start as the leader of its own process group, so that stopping it also
//! stops whatever it forked: wait until it listens on a loopback port, then SIGTERM to the group,
//! SIGKILL to what is left after a grace period, and reaping.
//!
//! Included as a child module (`#[path = "process.rs"] mod process;`) by the support modules
//! that start servers.

#![allow(dead_code)] // Each user takes a different part.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now (the kernel's choice for an ephemeral bind). Another
/// process may take it before the server binds it: the starters retry on a new port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 for a free port")
}

/// Why `Group::wait_listening` gave up.
#[derive(Debug)]
pub enum NotListening {
    /// The program ended first (a port taken meanwhile, a bad configuration): how, or why that
    /// could not be learnt.
    Ended(std::io::Result<ExitStatus>),
    /// Nothing listened within the time allowed.
    Slow,
}

/// A started program, leader of its own process group (whose id is therefore its pid, and which
/// holds only what it forked). It is not reaped before `stop`, so that the group id cannot be
/// reused while the group is signalled. Nothing stops it on drop: its owner calls `stop`.
pub struct Group {
    child: Child,
}

impl Group {
    /// Starts `cmd` with these standard streams in a new process group.
    pub fn spawn(
        mut cmd: Command,
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    ) -> std::io::Result<Group> {
        use std::os::unix::process::CommandExt;
        cmd.stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        cmd.spawn().map(|child| Group { child })
    }

    /// How the leader ended, once it has; it stays unreaped (a zombie) until `stop`.
    pub fn ended(&self) -> Option<std::io::Result<ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        // SAFETY: waitid only writes into `info`, a zeroed siginfo_t of our own; WNOWAIT leaves
        // the child to be reaped by `stop`.
        let info = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if r != 0 {
                return Some(Err(std::io::Error::last_os_error()));
            }
            if info.si_pid() == 0 {
                return None;
            }
            info
        };
        // SAFETY: si_status is valid for the SIGCHLD siginfo waitid filled in.
        let status = unsafe { info.si_status() };
        // The wait(2) status word the same ending gives, as std's ExitStatus holds it.
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            _ => status,
        };
        Some(Ok(ExitStatus::from_raw(raw)))
    }

    /// Waits up to `within` for the leader to end; whether it has.
    pub fn wait_ended(&self, within: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.ended().is_some() {
                return true;
            }
            if start.elapsed() >= within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Closes the pipe on the program's stdin, if it was given one; whether there was one.
    pub fn close_stdin(&mut self) -> bool {
        self.child.stdin.take().is_some()
    }

    /// Waits until something accepts TCP connections on 127.0.0.1:`port`; fails when the
    /// program ends first or nothing listens within `within`.
    pub fn wait_listening(&self, port: u16, within: Duration) -> Result<(), NotListening> {
        let start = Instant::now();
        loop {
            if let Some(how) = self.ended() {
                return Err(NotListening::Ended(how));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > within {
                return Err(NotListening::Slow);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `wait_listening` with the failure as a message that names the program `name` and ends
    /// with `log()`, what it wrote to stderr.
    pub fn wait_listening_or_log(
        &self,
        name: &str,
        port: u16,
        within: Duration,
        log: impl FnOnce() -> String,
    ) -> Result<(), String> {
        let why = match self.wait_listening(port, within) {
            Ok(()) => return Ok(()),
            Err(NotListening::Ended(Ok(status))) => format!("{name} exited at start ({status})"),
            Err(NotListening::Ended(Err(e))) => format!("{name} exited at start (waitid: {e})"),
            Err(NotListening::Slow) => format!(
                "{name} did not listen on 127.0.0.1:{port} within {} s",
                within.as_secs()
            ),
        };
        Err(format!("{why}; its stderr:\n{}", log()))
    }

    /// SIGTERM to the group, up to `grace` for the leader to end, SIGKILL to whatever is left of
    /// the group (workers that outlived their leader, or everything when SIGTERM was not
    /// enough), and reaping. Call it once.
    pub fn stop(&mut self, grace: Duration) {
        let group = -(self.child.id() as libc::pid_t);
        // SAFETY: kill(2) with a negative pid signals exactly the group we created; its leader
        // is not reaped before the SIGKILL below, so the group id is still ours.
        unsafe { libc::kill(group, libc::SIGTERM) };
        self.wait_ended(grace);
        // SAFETY: as above; harmless when the group is already gone.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

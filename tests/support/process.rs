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
            if listener_is_ours(port, self.child.id())
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
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

/// True when a socket listens on `port` and it is not another server this test process
/// started (a process group whose leader is our child, but not the group led by `leader`): two
/// servers started at once can be handed the same free port, and the one that lost the bind
/// would otherwise be taken for ready while the tests talk to the other. A listener of
/// anything else (a daemon that left its group) counts, and so does any answer when /proc
/// cannot be read; the caller's own checks then judge.
///
/// Asked before connecting: a connect to a port nobody listens on can, once in many thousand
/// tries, be given that same port as its own and connect to itself, and then it holds the port
/// the server is about to bind ("cannot opensocket") and looks like a listener.
pub fn listener_is_ours(port: u16, leader: u32) -> bool {
    let Some(owners) = listener_pids(port) else {
        return true;
    };
    if owners.is_empty() {
        return false;
    }
    if owners.iter().any(|&pid| pgid_of(pid) == Some(leader)) {
        return true;
    }
    let me = std::process::id();
    !owners.iter().any(|&pid| {
        pgid_of(pid)
            .and_then(parent_of)
            .is_some_and(|parent| parent == me)
    })
}

/// The processes holding a socket that listens on `port` (any address), from /proc; None when
/// /proc's socket tables cannot be read, empty when nothing listens. A listener whose holder
/// cannot be seen (another user's process) is given as pid 0, which is in no group of ours.
fn listener_pids(port: u16) -> Option<Vec<u32>> {
    let mut inodes: Vec<String> = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is "ADDR:PORT" in hex; state 0A is LISTEN; field 9 is the inode.
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                if let Some(inode) = f.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if !readable {
        return None;
    }
    if inodes.is_empty() {
        return Some(Vec::new());
    }
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Some(vec![0]);
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|t| t.to_str().map(|t| inodes.iter().any(|i| i == t)))
                .unwrap_or(false)
        });
        if holds {
            pids.push(pid);
        }
    }
    if pids.is_empty() {
        pids.push(0);
    }
    Some(pids)
}

/// Field `n` (1-based, after the command name) of /proc/PID/stat.
fn stat_field(pid: u32, n: usize) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ...": the command may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(n)?.parse().ok()
}

fn pgid_of(pid: u32) -> Option<u32> {
    stat_field(pid, 2)
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_field(pid, 1)
}

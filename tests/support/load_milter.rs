//! The load Milter (tests/milters/load_milter.py, pymilter on sendmail's libmilter) on a free
//! loopback port, for the tests that need a real Milter with a verdict per message: the verdict
//! follows the Subject's number (see the script).

#![allow(dead_code)] // Each test file uses a different part.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The load Milter on a free loopback port, killed on drop.
pub struct LoadMilter {
    child: Child,
    pub port: u16,
}

impl LoadMilter {
    pub fn start() -> LoadMilter {
        LoadMilter::start_with(free_port(), &[])
    }

    /// One that also takes CONNECT (pymilter negotiates NOCONNECT otherwise), on a given port
    /// (0: a free one).
    pub fn with_connect(port: u16) -> LoadMilter {
        let port = if port == 0 { free_port() } else { port };
        LoadMilter::start_with(port, &["--with-connect"])
    }

    fn start_with(port: u16, args: &[&str]) -> LoadMilter {
        let probe = Command::new("/usr/bin/python3")
            .args(["-c", "import Milter"])
            .output();
        match probe {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "/usr/bin/python3 cannot import Milter: install the Debian package python3-milter"
            ),
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/milters/load_milter.py");
        let child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let mut m = LoadMilter { child, port };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("{} exited at start: {status}", script.display());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} did not listen on 127.0.0.1:{port} within 20 s",
                script.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Drop for LoadMilter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

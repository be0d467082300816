//! The load Milter (tests/milters/load_milter.py, pymilter on sendmail's libmilter) on a free
//! loopback port, for the tests that need a real Milter with a verdict per message: the verdict
//! follows the Subject's number (see the script).

#![allow(dead_code)] // Each test file uses a different part.

// Stateless helpers, so a test that also includes milters.rs (which has its own copy) loses
// nothing by the second copy.
#[allow(clippy::duplicate_mod)]
#[path = "process.rs"]
mod process;

use std::net::TcpStream;
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
        LoadMilter::on_a_free_port(&[])
    }

    /// One that also takes CONNECT (pymilter negotiates NOCONNECT otherwise), on a given port
    /// (0: a free one).
    pub fn with_connect(port: u16) -> LoadMilter {
        if port == 0 {
            return LoadMilter::on_a_free_port(&["--with-connect"]);
        }
        LoadMilter::start_with(port, &["--with-connect"]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Tries new ports while another server took the chosen one before the Milter bound it.
    fn on_a_free_port(args: &[&str]) -> LoadMilter {
        let mut last = String::new();
        for _ in 0..5 {
            match LoadMilter::start_with(process::free_port(), args) {
                Ok(m) => return m,
                Err(e) => last = e,
            }
        }
        panic!("{last}")
    }

    fn start_with(port: u16, args: &[&str]) -> Result<LoadMilter, String> {
        use std::os::unix::process::CommandExt;
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
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let mut m = LoadMilter { child, port };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = m.child.try_wait() {
                return Err(format!("{} exited at start: {status}", script.display()));
            }
            // Listening, and not some other server of this test process on the same port.
            if process::listener_is_ours(port, m.child.id())
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return Ok(m);
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "{} did not listen on 127.0.0.1:{port} within 20 s",
                    script.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LoadMilter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

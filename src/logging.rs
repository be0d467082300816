//! DEBUG output, per handle. The process has one global `log` logger; ours dispatches each record
//! to the sink of the handle that is working on the current thread, so two handles (two filter
//! slots) keep their own DEBUG level and destination. Each sink is an `env_logger::Logger`
//! writing to stderr, a file or syslog. Writing a log line never fails or blocks a message: write
//! errors are dropped.

use crate::config::{Config, LogTarget};
use log::{LevelFilter, Log, Metadata, Record};
use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Once};

/// One handle's log destination and level.
pub struct LogSink {
    level: LevelFilter,
    logger: Option<env_logger::Logger>,
}

thread_local! {
    static CURRENT: RefCell<Vec<Arc<LogSink>>> = const { RefCell::new(Vec::new()) };
}

/// DEBUG value → `log` level: 0 nothing, 1 one line per message and errors, 2 the protocol trace,
/// 3 the raw octets too.
pub fn level_for(debug: u8) -> LevelFilter {
    match debug {
        0 => LevelFilter::Off,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

impl LogSink {
    pub fn new(config: &Config) -> Arc<LogSink> {
        install();
        let level = level_for(config.debug);
        if level == LevelFilter::Off {
            return Arc::new(LogSink {
                level,
                logger: None,
            });
        }
        let mut builder = env_logger::Builder::new();
        builder.filter_level(level);
        let syslog = config.log_target == LogTarget::Syslog;
        builder.format(move |buf, record| {
            if syslog {
                writeln!(buf, "{}: {}", record.level(), record.args())
            } else {
                writeln!(
                    buf,
                    "milter-spamfilter[{}] {}: {}",
                    std::process::id(),
                    record.level(),
                    record.args()
                )
            }
        });
        match &config.log_target {
            LogTarget::Stderr => {
                builder.target(env_logger::Target::Stderr);
            }
            LogTarget::File(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(file) => {
                    builder.target(env_logger::Target::Pipe(Box::new(file)));
                }
                Err(e) => {
                    // The handle still works; its log goes to stderr, saying why.
                    eprintln!(
                        "milter-spamfilter: {}: LOG_FILE: cannot open \"{}\": {e}; logging to stderr",
                        config.path,
                        path.display()
                    );
                    builder.target(env_logger::Target::Stderr);
                }
            },
            LogTarget::Syslog => {
                builder.target(env_logger::Target::Pipe(Box::new(SyslogWriter::default())));
            }
        }
        Arc::new(LogSink {
            level,
            logger: Some(builder.build()),
        })
    }

    /// Runs `f` with this sink receiving the current thread's log records.
    pub fn run<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        if self.level == LevelFilter::Off {
            // Nothing of this handle's is logged: with no sink on the thread's stack the
            // dispatcher drops every record, just as this one would. Pushing it would cost two
            // atomic operations on a count every MTA thread shares.
            return f();
        }
        struct Pop;
        impl Drop for Pop {
            fn drop(&mut self) {
                CURRENT.with(|c| {
                    c.borrow_mut().pop();
                });
            }
        }
        CURRENT.with(|c| c.borrow_mut().push(Arc::clone(self)));
        let _pop = Pop;
        f()
    }

    pub fn level(&self) -> LevelFilter {
        self.level
    }
}

struct Dispatcher;

impl Log for Dispatcher {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        CURRENT
            .try_with(|c| {
                c.borrow()
                    .last()
                    .is_some_and(|sink| metadata.level() <= sink.level)
            })
            .unwrap_or(false)
    }

    fn log(&self, record: &Record<'_>) {
        let _ = CURRENT.try_with(|c| {
            if let Some(sink) = c.borrow().last() {
                if record.level() <= sink.level {
                    if let Some(logger) = &sink.logger {
                        logger.log(record);
                    }
                }
            }
        });
    }

    fn flush(&self) {}
}

static DISPATCHER: Dispatcher = Dispatcher;

/// Installs the dispatcher as the process's logger, once. If the host already installed a logger,
/// ours is not installed and records go to the host's.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if log::set_logger(&DISPATCHER).is_ok() {
            log::set_max_level(LevelFilter::Trace);
        }
    });
}

/// Sends each line to syslog(3) with facility LOG_MAIL, as Milters themselves log. No openlog(3):
/// that would change the ident and options of the MTA's own syslog lines, since the process has
/// only one; the facility goes with each message and the line names the library itself.
#[derive(Default)]
struct SyslogWriter {
    line: Vec<u8>,
}

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        while let Some(pos) = self.line.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.line.drain(..=pos).collect();
            line.pop();
            line.retain(|&b| b != 0);
            line.push(0);
            // SAFETY: the format is a static NUL-terminated "%s" string and the one argument is
            // NUL-terminated (NULs inside were removed above).
            unsafe {
                libc::syslog(
                    libc::LOG_MAIL | libc::LOG_INFO,
                    c"milter-spamfilter: %s".as_ptr(),
                    line.as_ptr() as *const libc::c_char,
                );
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

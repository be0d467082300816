//! Resolving HOST (or SOCKS_HOST) by name, bounded: getaddrinfo has no timeout of its own, so a
//! lookup runs on a helper thread that the caller stops waiting for at its deadline. Unbounded,
//! that is one stalled thread per message while DNS does not answer, piling up inside the MTA.
//! So, per process:
//!
//! - one lookup per name at a time: a thread wanting a name that is being looked up waits for
//!   that lookup (with its own deadline) instead of starting another;
//! - at most `MAX_LOOKUP_THREADS` lookup threads in all; past that a message fails at once with
//!   "resolver busy/stalled" (only names nobody has asked for yet can get there: with a stalled
//!   resolver each name keeps its one thread until the resolver gives up);
//! - an answer is kept for `ANSWER_TTL` and used instead of asking again; a failure is not kept,
//!   so that a name that appears (or a resolver that comes back) is seen by the next message.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most lookup threads the process runs at once.
pub const MAX_LOOKUP_THREADS: usize = 4;

/// How long a name's addresses are used without asking the resolver again.
pub const ANSWER_TTL: Duration = Duration::from_secs(30);

/// What a lookup gives: the addresses in the resolver's order, or why there are none.
type Answer = std::result::Result<Vec<IpAddr>, String>;

/// One lookup in flight: its answer, once there is one, and the waiters' wake-up.
#[derive(Default)]
struct Lookup {
    answer: Mutex<Option<Answer>>,
    done: Condvar,
}

enum Entry {
    Known { addrs: Vec<IpAddr>, at: Instant },
    Pending(Arc<Lookup>),
}

/// The per-process table of names: answers kept and lookups in flight, and how many lookup
/// threads run. It lives for ever (`global`): a stalled lookup thread may outlive any caller.
#[derive(Default)]
pub struct Resolver {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    names: HashMap<String, Entry>,
    threads: usize,
}

/// The process's resolver table.
pub fn global() -> &'static Resolver {
    static GLOBAL: std::sync::OnceLock<Resolver> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(Resolver::default)
}

/// How lookup threads look a name up: the system resolver, or a stand-in in unit tests.
pub type LookupFn = fn(&str) -> Answer;

/// getaddrinfo, every A and AAAA record, in its order.
pub fn system_lookup(name: &str) -> Answer {
    use std::net::ToSocketAddrs;
    (name, 0)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .map_err(|e| e.to_string())
}

impl Resolver {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-done that matters here.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The addresses of `name`, waiting at most `limit` for them.
    pub fn resolve(
        &'static self,
        name: &str,
        limit: Duration,
        lookup: LookupFn,
    ) -> Result<Vec<IpAddr>> {
        let deadline = Instant::now() + limit;
        let pending = {
            let mut state = self.state();
            match state.names.get(name) {
                Some(Entry::Known { addrs, at }) if at.elapsed() < ANSWER_TTL => {
                    return Ok(addrs.clone())
                }
                Some(Entry::Pending(lookup)) => Arc::clone(lookup),
                _ => self.start(&mut state, name, lookup)?,
            }
        };
        wait(&pending, name, deadline, limit)
    }

    /// Starts a lookup thread for `name` (the lock held), or refuses when the cap is reached.
    fn start(
        &'static self,
        state: &mut State,
        name: &str,
        lookup: LookupFn,
    ) -> Result<Arc<Lookup>> {
        if state.threads >= MAX_LOOKUP_THREADS {
            return Err(Error::timeout(format!(
                "cannot resolve {name}: resolver busy/stalled: {} lookups of other names are \
                 still waiting for it (at most {MAX_LOOKUP_THREADS} at a time)",
                state.threads
            )));
        }
        let pending = Arc::new(Lookup::default());
        let theirs = Arc::clone(&pending);
        let owned = name.to_string();
        std::thread::Builder::new()
            .name("milter-resolve".to_string())
            .spawn(move || self.finish(&owned, &theirs, lookup(&owned)))
            .map_err(|e| Error::connect(format!("cannot start a thread to resolve {name}: {e}")))?;
        state.threads += 1;
        state
            .names
            .insert(name.to_string(), Entry::Pending(Arc::clone(&pending)));
        Ok(pending)
    }

    /// A lookup thread's end: keep a good answer, forget a failure, wake the waiters.
    fn finish(&self, name: &str, lookup: &Arc<Lookup>, answer: Answer) {
        {
            let mut state = self.state();
            state.threads -= 1;
            match &answer {
                Ok(addrs) if !addrs.is_empty() => {
                    state.names.insert(
                        name.to_string(),
                        Entry::Known {
                            addrs: addrs.clone(),
                            at: Instant::now(),
                        },
                    );
                }
                _ => {
                    state.names.remove(name);
                }
            }
        }
        let mut slot = lookup.answer.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(answer);
        lookup.done.notify_all();
    }

    /// How many lookup threads run now (for tests).
    pub fn threads(&self) -> usize {
        self.state().threads
    }
}

/// Waits for `lookup`'s answer until `deadline`.
fn wait(lookup: &Lookup, name: &str, deadline: Instant, limit: Duration) -> Result<Vec<IpAddr>> {
    let mut slot = lookup.answer.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match &*slot {
            Some(Ok(addrs)) if !addrs.is_empty() => return Ok(addrs.clone()),
            Some(Ok(_)) => return Err(Error::connect(format!("{name} has no address"))),
            Some(Err(e)) => return Err(Error::connect(format!("cannot resolve {name}: {e}"))),
            None => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::timeout(format!(
                "cannot resolve {name}: the resolver did not answer within {:.2} s",
                limit.as_secs_f64()
            )));
        }
        slot = lookup
            .done
            .wait_timeout(slot, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn table() -> &'static Resolver {
        Box::leak(Box::new(Resolver::default()))
    }

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    /// Answers after 200 ms, counting its calls; `fail.*` names fail.
    fn slow(name: &str) -> Answer {
        CALLS.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        match name.starts_with("fail.") {
            true => Err("Name or service not known".to_string()),
            false => Ok(vec!["192.0.2.1".parse().unwrap()]),
        }
    }

    /// Never answers (for as long as a test runs).
    fn stalled(_: &str) -> Answer {
        std::thread::sleep(Duration::from_secs(3600));
        Err("never".to_string())
    }

    // One test touches CALLS, so that parallel tests do not mix their counts.
    #[test]
    fn waiters_share_one_lookup_answers_are_kept_failures_are_not() {
        let t = table();
        CALLS.store(0, Ordering::SeqCst);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    let a = t
                        .resolve("ok.example", Duration::from_secs(5), slow)
                        .unwrap();
                    assert_eq!(a, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
                });
            }
        });
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            1,
            "16 threads, one name: one lookup"
        );
        t.resolve("ok.example", Duration::from_millis(1), slow)
            .expect("the kept answer, without waiting");
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        for _ in 0..2 {
            let e = t
                .resolve("fail.example", Duration::from_secs(5), slow)
                .unwrap_err();
            assert_eq!(e.kind, crate::ErrorKind::Connect);
            assert_eq!(
                e.message,
                "cannot resolve fail.example: Name or service not known"
            );
        }
        assert_eq!(CALLS.load(Ordering::SeqCst), 3, "a failure is asked again");
        assert_eq!(t.threads(), 0);
    }

    #[test]
    fn a_stalled_resolver_never_runs_more_than_the_cap() {
        let t = table();
        let start = Instant::now();
        let results: Vec<Result<Vec<IpAddr>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..64)
                .map(|i| {
                    s.spawn(move || {
                        let name = format!("n{}.stalled.example", i % 8);
                        t.resolve(&name, Duration::from_millis(300), stalled)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "waits are bounded"
        );
        assert_eq!(t.threads(), MAX_LOOKUP_THREADS);
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(e) if e.message.contains("resolver busy/stalled")))
            .count();
        let timed_out = results
            .iter()
            .filter(|r| matches!(r, Err(e) if e.message.ends_with("did not answer within 0.30 s")))
            .count();
        assert_eq!(busy + timed_out, 64, "{results:?}");
        assert!(
            busy > 0 && timed_out > 0,
            "busy {busy}, timed out {timed_out}"
        );
        let e = t
            .resolve("other.example", Duration::from_secs(5), stalled)
            .unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::Timeout);
        assert_eq!(
            e.message,
            "cannot resolve other.example: resolver busy/stalled: 4 lookups of other names are \
             still waiting for it (at most 4 at a time)"
        );
    }
}

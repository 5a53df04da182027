//! What the in-process virtio devices (net, vsock, echo) share: the worker
//! thread that serves their queues while active ([`QueueWorker`], [`spawn`]),
//! config-space reads from a byte image, the queue-count check of activation
//! and the epoll wait.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::ActivateError;
use crate::log::debug;

/// An active device's worker thread and the eventfd that tells it to end.
pub(crate) struct WorkerThread {
    pub(crate) kill: EventFd,
    pub(crate) thread: JoinHandle<()>,
}

impl WorkerThread {
    /// Tells the worker to end and waits for it; a worker that panicked is
    /// counted in `panics`. `dev` names the device in the debug log.
    pub(crate) fn stop(self, dev: &str, panics: &AtomicU64) {
        if let Err(e) = self.kill.write(1) {
            debug(format_args!("{dev}: cannot signal the worker to stop: {e}"));
        }
        if self.thread.join().is_err() {
            panics.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The device side of an active device, served on its own thread by [`spawn`].
pub(crate) trait QueueWorker: Send + 'static {
    /// The queue notification eventfds, in queue order.
    fn queue_evts(&self) -> &[EventFd];
    /// Serves the queues: once when the thread starts and after every wake-up.
    /// Work left after a bounded pass is picked up by writing a queue eventfd.
    fn process(&mut self);
    /// Extra fd `index` (in [`spawn`]'s `extra`) is ready with `events`;
    /// [`QueueWorker::process`] follows.
    fn extra_event(&mut self, _index: usize, _events: EventSet) {}
    /// The thread woke up (before the events are handled).
    fn woken(&mut self) {}
}

/// Starts thread `name` for `worker`: it waits on the worker's queue eventfds,
/// the `extra` fds and a kill eventfd; on each wake-up it reads the ready queue
/// eventfds (before processing, so a notification during it wakes it again),
/// passes extra-fd events on, then processes; it ends when the returned
/// [`WorkerThread`] is stopped or epoll fails (logged under `dev`).
pub(crate) fn spawn<W: QueueWorker>(
    name: &str,
    dev: &'static str,
    mut worker: W,
    extra: &[(RawFd, EventSet)],
) -> Result<WorkerThread, ActivateError> {
    let w = |e: std::io::Error| ActivateError::Worker(e.to_string());
    let kill = EventFd::new(libc::EFD_NONBLOCK).map_err(w)?;
    let epoll = Epoll::new().map_err(w)?;
    let queues = worker.queue_evts().len();
    let fds: Vec<(RawFd, EventSet)> = worker
        .queue_evts()
        .iter()
        .map(|e| (e.as_raw_fd(), EventSet::IN))
        .chain(extra.iter().copied())
        .chain([(kill.as_raw_fd(), EventSet::IN)])
        .collect();
    for (token, &(fd, ev)) in fds.iter().enumerate() {
        epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, token as u64))
            .map_err(w)?;
    }
    let kill_token = fds.len() - 1;
    let kill_rx = kill.try_clone().map_err(w)?;
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut events = vec![EpollEvent::default(); fds.len()];
            worker.process();
            loop {
                let Some(n) = epoll_wait(&epoll, &mut events, dev) else {
                    return;
                };
                worker.woken();
                for ev in &events[..n] {
                    match usize::try_from(ev.data()).unwrap_or(kill_token) {
                        i if i < queues => {
                            let _ = worker.queue_evts()[i].read();
                        }
                        i if i < kill_token => worker.extra_event(i - queues, ev.event_set()),
                        _ => {
                            let _ = kill_rx.read();
                            return;
                        }
                    }
                }
                worker.process();
            }
        })
        .map_err(w)?;
    Ok(WorkerThread { kill, thread })
}

/// A config-space read of `data.len()` bytes at `offset` from the config
/// image `config`: bytes past its end (or past `u64`) read as 0.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| config.get(usize::try_from(o).ok()?))
            .copied()
            .unwrap_or(0);
    }
}

/// Activation needs `expected` queues and as many queue eventfds, and the
/// queues the device uses (`must_be_ready`, indices) ready.
pub(crate) fn check_queues(
    queues: &[Queue],
    queue_evts: &[EventFd],
    expected: usize,
    must_be_ready: &[usize],
) -> Result<(), ActivateError> {
    if queues.len() != expected || queue_evts.len() != expected {
        return Err(ActivateError::QueueCount {
            expected,
            got: queues.len().min(queue_evts.len()),
        });
    }
    match must_be_ready
        .iter()
        .find(|&&i| !queues.get(i).is_some_and(|q| q.ready()))
    {
        Some(&i) => Err(ActivateError::QueueNotReady(i)),
        None => Ok(()),
    }
}

/// Waits for events (retrying when interrupted); `None` when epoll fails,
/// which ends the worker (logged under `dev`).
pub(crate) fn epoll_wait(epoll: &Epoll, events: &mut [EpollEvent], dev: &str) -> Option<usize> {
    loop {
        match epoll.wait(-1, events) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug(format_args!("{dev}: epoll_wait: {e}; worker stops"));
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::*;

    /// Records what the scaffold calls.
    struct Probe {
        evts: Vec<EventFd>,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl QueueWorker for Probe {
        fn queue_evts(&self) -> &[EventFd] {
            &self.evts
        }
        fn process(&mut self) {
            self.log.lock().unwrap().push("process".into());
        }
        fn extra_event(&mut self, index: usize, _events: EventSet) {
            self.log.lock().unwrap().push(format!("extra {index}"));
        }
        fn woken(&mut self) {
            self.log.lock().unwrap().push("woken".into());
        }
    }

    fn wait_for(log: &Mutex<Vec<String>>, n: usize) -> Vec<String> {
        let t = Instant::now();
        loop {
            let l = log.lock().unwrap().clone();
            if l.len() >= n {
                return l;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "{l:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Processing at start and after each wake-up; a queue kick is consumed
    /// (it does not wake the worker again); extra fds reach their handler;
    /// stop ends the thread without another pass.
    #[test]
    fn spawned_worker_serves_kicks_and_extra_fds_until_stopped() {
        let evts: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let kick = evts[1].try_clone().unwrap();
        let extra = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe {
            evts,
            log: log.clone(),
        };
        let t = spawn(
            "probe",
            "probe",
            probe,
            &[(extra.as_raw_fd(), EventSet::IN | EventSet::EDGE_TRIGGERED)],
        )
        .unwrap();
        assert_eq!(wait_for(&log, 1), ["process"]);
        kick.write(1).unwrap();
        assert_eq!(wait_for(&log, 3)[1..], ["woken", "process"]);
        assert_eq!(kick.read().ok(), None, "the worker read the kick");
        extra.write(1).unwrap();
        assert_eq!(wait_for(&log, 6)[3..], ["woken", "extra 0", "process"]);
        let panics = AtomicU64::new(0);
        t.stop("probe", &panics);
        assert_eq!(panics.load(Ordering::SeqCst), 0);
        // The kill wakes it once more, and it ends without processing.
        assert_eq!(log.lock().unwrap()[6..], ["woken"]);
    }

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let config = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 3];
        read_config_bytes(&config, 2, &mut d);
        assert_eq!(d, [3, 4, 0]);
        let mut d = [0xffu8; 2];
        read_config_bytes(&config, u64::MAX, &mut d);
        assert_eq!(d, [0, 0]);
    }

    #[test]
    fn queue_count_must_match() {
        let evts: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let queues: Vec<Queue> = (0..2).map(|_| Queue::new(16).unwrap()).collect();
        assert_eq!(check_queues(&queues, &evts, 2, &[]), Ok(()));
        assert_eq!(
            check_queues(&queues, &evts[..1], 2, &[]),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        );
        // Fresh queues are not ready: only the ones the device needs count.
        let mut queues = queues;
        assert_eq!(
            check_queues(&queues, &evts, 2, &[0, 1]),
            Err(ActivateError::QueueNotReady(0))
        );
        queues[0].set_ready(true);
        assert_eq!(
            check_queues(&queues, &evts, 2, &[0, 1]),
            Err(ActivateError::QueueNotReady(1))
        );
        assert_eq!(check_queues(&queues, &evts, 2, &[0]), Ok(()));
    }
}

//! What the in-process virtio devices (echo, vsock) share: the worker thread
//! that serves their queues while active, config-space reads from a byte
//! image, the queue-count check of activation and the worker's epoll wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{Epoll, EpollEvent};
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

    use super::*;

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

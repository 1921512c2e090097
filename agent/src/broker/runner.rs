//! The one broker loop step both drivers run (the host daemon and the unikernel image):
//! poll the broker tasks, then let the driver serve their pipes (move bytes between each
//! [`Pipe`] and its socket), up to [`TASK_ROUNDS`] times while bytes keep moving (a TLS
//! flight is several records; the driver's next network poll sends what the last round
//! queued).
//!
//! The tasks are polled with a no-op waker: the drivers turn their loop often while a fetch
//! runs (see [`Runner::connected`]), so nothing needs waking.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Waker};

use super::pipe::{Pipe, PipeState};
use crate::limits::TASK_ROUNDS;

/// The broker tasks (one future that polls them all; they never end) and their pipes.
pub struct Runner<'a, F: Future + ?Sized> {
    tasks: Pin<&'a mut F>,
    pipes: &'a [Pipe],
}

impl<'a, F: Future + ?Sized> Runner<'a, F> {
    /// `tasks` polls every broker task; `pipes[i]` is task `i`'s.
    pub fn new(tasks: Pin<&'a mut F>, pipes: &'a [Pipe]) -> Self {
        Runner { tasks, pipes }
    }

    /// One turn: poll the tasks, then `serve` the pipes (it returns whether any bytes moved);
    /// again while they do, at most [`TASK_ROUNDS`] times. Returns whether bytes moved.
    pub fn turn(&mut self, mut serve: impl FnMut(&[Pipe]) -> bool) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut moved = false;
        for _ in 0..TASK_ROUNDS {
            let _ = self.tasks.as_mut().poll(&mut cx);
            let progress = serve(self.pipes);
            moved |= progress;
            if !progress {
                break;
            }
        }
        moved
    }

    /// Whether a pipe is connecting, connected or closing (the driver keeps turning then).
    pub fn connected(&self) -> bool {
        self.pipes.iter().any(|p| p.state() != PipeState::Idle)
    }

    /// The size of the tasks' future (for the drivers' start-up line).
    pub fn tasks_size(&self) -> usize {
        core::mem::size_of_val(&*self.tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::future::poll_fn;
    use core::task::Poll;

    #[test]
    fn turns_while_bytes_move_and_at_most_task_rounds() {
        let pipes = [Pipe::new()];
        let polls = core::cell::Cell::new(0);
        let mut tasks = core::pin::pin!(poll_fn(|_| {
            polls.set(polls.get() + 1);
            Poll::<()>::Pending
        }));
        let mut runner = Runner::new(tasks.as_mut(), &pipes);
        // Bytes move twice, then stop: three rounds.
        let mut served = 0;
        assert!(runner.turn(|_| {
            served += 1;
            served < 3
        }));
        assert_eq!(served, 3);
        // Bytes always move: capped.
        let mut served = 0;
        assert!(runner.turn(|_| {
            served += 1;
            true
        }));
        assert_eq!(served, TASK_ROUNDS);
        // Nothing moves: one round, nothing reported.
        assert!(!runner.turn(|_| false));
        assert!(!runner.connected());
        assert_eq!(polls.get(), 3 + TASK_ROUNDS + 1);
    }
}

//! Micro-batching, sans IO: prompts gather until a batch is full or its first prompt has waited long enough.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A FIFO of items that leave in batches of at most `batch_items_max`, no later than `batch_wait_max` after the
/// oldest one arrived.
#[derive(Debug)]
pub(crate) struct Batcher<T> {
    queue: VecDeque<(Instant, T)>,
    batch_items_max: usize,
    batch_wait_max: Duration,
}

impl<T> Batcher<T> {
    pub(crate) fn new(batch_items_max: usize, batch_wait_max: Duration) -> Self {
        assert!(batch_items_max > 0, "a batch holds at least one item");
        Batcher {
            queue: VecDeque::new(),
            batch_items_max,
            batch_wait_max,
        }
    }

    pub(crate) fn push(&mut self, now: Instant, item: T) {
        self.queue.push_back((now, item));
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn batch_items_max(&self) -> usize {
        self.batch_items_max
    }

    /// When the next batch is due: `None` when empty, the oldest arrival when a full batch is waiting.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        let (oldest, _) = self.queue.front()?;
        if self.queue.len() >= self.batch_items_max {
            Some(*oldest)
        } else {
            Some(*oldest + self.batch_wait_max)
        }
    }

    /// Whether a batch is due at `now`.
    #[cfg(test)]
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.due_at().is_some_and(|due| due <= now)
    }

    /// Takes the oldest items, at most `items_max` (and at most a batch), with their arrival times.
    #[cfg(test)]
    pub(crate) fn take(&mut self, items_max: usize) -> Vec<(Instant, T)> {
        let count = self.queue.len().min(self.batch_items_max).min(items_max);
        self.queue.drain(..count).collect()
    }

    /// Takes the newest item and the newest others that `alike` pairs with it, at most `items_max` (and at most a
    /// batch) in all, in arrival order, with their arrival times.
    pub(crate) fn take_newest_alike(
        &mut self,
        items_max: usize,
        alike: impl Fn(&T, &T) -> bool,
    ) -> Vec<(Instant, T)> {
        let count_max = self.batch_items_max.min(items_max);
        let Some((_, newest)) = self.queue.back() else {
            return Vec::new();
        };
        if count_max == 0 {
            return Vec::new();
        }
        let mut picked: Vec<usize> = Vec::with_capacity(count_max);
        for (index, (_, item)) in self.queue.iter().enumerate().rev() {
            if picked.len() == count_max {
                break;
            }
            if alike(newest, item) {
                picked.push(index);
            }
        }
        // `picked` runs from the newest down; removing in that order keeps the lower indices valid.
        let mut batch: Vec<(Instant, T)> = picked
            .into_iter()
            .filter_map(|index| self.queue.remove(index))
            .collect();
        batch.reverse();
        batch
    }

    /// Takes the oldest items for as long as `expired` says yes of their arrival time, with their arrival times.
    pub(crate) fn take_while_oldest(
        &mut self,
        mut expired: impl FnMut(&Instant) -> bool,
    ) -> Vec<(Instant, T)> {
        let count = self
            .queue
            .iter()
            .take_while(|(arrived, _)| expired(arrived))
            .count();
        self.queue.drain(..count).collect()
    }

    /// Removes the items `keep` rejects and returns how many went.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let before = self.queue.len();
        self.queue.retain(|(_, item)| keep(item));
        before - self.queue.len()
    }

    /// Empties the queue.
    pub(crate) fn drain_all(&mut self) -> Vec<T> {
        self.queue.drain(..).map(|(_, item)| item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_batches_leave_at_once_partial_ones_after_the_wait() {
        let start = Instant::now();
        let wait = Duration::from_micros(2_000);
        let mut batcher = Batcher::new(3, wait);
        assert_eq!(batcher.due_at(), None);
        assert!(!batcher.is_due(start));
        batcher.push(start, 1);
        batcher.push(start + Duration::from_micros(500), 2);
        assert_eq!(batcher.due_at(), Some(start + wait));
        assert!(!batcher.is_due(start + Duration::from_micros(1_999)));
        assert!(batcher.is_due(start + wait));
        batcher.push(start + Duration::from_micros(600), 3);
        batcher.push(start + Duration::from_micros(700), 4);
        // Full: due as soon as the oldest arrived.
        assert_eq!(batcher.due_at(), Some(start));
        let batch: Vec<i32> = batcher
            .take(usize::MAX)
            .into_iter()
            .map(|(_, item)| item)
            .collect();
        assert_eq!(batch, vec![1, 2, 3]);
        assert_eq!(
            batcher.due_at(),
            Some(start + Duration::from_micros(700) + wait)
        );
        assert_eq!(batcher.take(0).len(), 0);
        assert_eq!(batcher.retain(|item| *item != 4), 1);
        batcher.push(start, 7);
        batcher.push(start, 8);
        batcher.push(start, 10);
        // Alike: the same parity as the newest (10), newest first, returned in arrival order.
        let newest: Vec<i32> = batcher
            .take_newest_alike(2, |a, b| a % 2 == b % 2)
            .into_iter()
            .map(|(_, item)| item)
            .collect();
        assert_eq!(newest, vec![8, 10]);
        assert_eq!(batcher.retain(|item| *item != 7), 1);
        batcher.push(start, 5);
        batcher.push(start + wait, 6);
        let expired = batcher.take_while_oldest(|arrived| *arrived < start + wait);
        assert_eq!(expired.len(), 1);
        assert_eq!(batcher.len(), 1);
        batcher.drain_all();
        assert!(batcher.is_empty());
    }
}

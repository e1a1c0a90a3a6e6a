//! A small shard-local cache of completions per style: chat repeats itself ("gg", "LUL", copypasta), and a repeated
//! message should cost no GPU time.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::style::STYLES;

/// Completions keyed by sanitised text, one slot per style, evicted oldest-inserted first.
#[derive(Debug)]
pub(crate) struct CompletionCache {
    entries: HashMap<Rc<str>, [Option<Rc<str>>; STYLES.len()]>,
    order: VecDeque<Rc<str>>,
    entries_max: usize,
}

impl CompletionCache {
    pub(crate) fn new(entries_max: usize) -> Self {
        CompletionCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            entries_max,
        }
    }

    pub(crate) fn get(&self, style_index: usize, text: &str) -> Option<Rc<str>> {
        self.entries.get(text)?.get(style_index)?.clone()
    }

    pub(crate) fn insert(&mut self, style_index: usize, text: Rc<str>, completion: Rc<str>) {
        if self.entries_max == 0 || style_index >= STYLES.len() {
            return;
        }
        if let Some(slots) = self.entries.get_mut(&*text) {
            slots[style_index] = Some(completion);
            return;
        }
        while self.entries.len() >= self.entries_max {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let mut slots: [Option<Rc<str>>; STYLES.len()] = Default::default();
        slots[style_index] = Some(completion);
        self.order.push_back(Rc::clone(&text));
        self.entries.insert(text, slots);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_styles_apart_and_evicts_the_oldest() {
        let mut cache = CompletionCache::new(2);
        cache.insert(0, "gg".into(), "gg bestie".into());
        cache.insert(1, "gg".into(), "gg matey".into());
        assert_eq!(cache.get(0, "gg").as_deref(), Some("gg bestie"));
        assert_eq!(cache.get(1, "gg").as_deref(), Some("gg matey"));
        assert_eq!(cache.get(2, "gg"), None);
        cache.insert(0, "hi".into(), "hi bestie".into());
        cache.insert(0, "yo".into(), "yo bestie".into());
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(0, "gg"), None, "oldest evicted");
        assert_eq!(cache.get(0, "yo").as_deref(), Some("yo bestie"));
        let mut disabled = CompletionCache::new(0);
        disabled.insert(0, "a".into(), "b".into());
        assert_eq!(disabled.get(0, "a"), None);
    }
}

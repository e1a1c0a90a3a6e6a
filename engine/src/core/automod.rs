//! AutoMod for one room: the heuristics a room's home shard applies to a chat message before it is styled.
//!
//! [`AutoMod`] is a plain state machine. It does no IO, reads no clock (time comes in as `now_ms`) and draws no
//! randomness, so the same inputs always give the same verdicts and the shard simulation can replay it. Who is
//! exempt is the caller's business: moderators and the broadcaster are not checked at all, and VIPs are checked
//! with `links_allowed` set (the moderation contract exempts them from the link rule only).
//!
//! A message is checked against, in this order, stopping at the first that matches:
//! 1. [`AutoModReason::Phrase`]: a banned phrase, matched on whole words after folding (see below). First because
//!    the room's moderators chose these phrases themselves.
//! 2. [`AutoModReason::Link`]: a URL or a bare domain with a common TLD. Next because links are how chat scams
//!    and spam bots work, so it is the reason a moderator most needs to see.
//! 3. [`AutoModReason::Caps`], [`AutoModReason::RepeatedWords`], [`AutoModReason::RepeatedChars`]: the shape of
//!    the message.
//! 4. [`AutoModReason::Duplicate`]: the same user sent the same text within `duplicate_window_ms`. Last because it
//!    is about the sender's history rather than this text, and is the weakest signal alone.
//!
//! Every checked message is remembered for the duplicate rule, flagged or not: pasting the same spam twice is
//! still spam, and a held message that is later allowed was still sent at that moment.
//!
//! **Folding.** Phrases and messages are compared in a folded form, so that cheap obfuscations do not get past a
//! phrase: Unicode lowercase; `0`→`o`, `3`→`e`, `4` and `@`→`a`, `5` and `$`→`s`, `7`→`t`; `1` kept as a wildcard
//! that matches `1`, `i` or `l` (folding it to one letter would make `bail` match `ball`); `.`, `_`, `-` and
//! apostrophes dropped, so `a.s.s` and `don't` are one word; every other run of non-letters (spaces, punctuation,
//! emoji) becomes one word boundary. Not folded, deliberately: letters spaced out one by one (`a s s` is also how
//! people write initials), spelled-out dots (`example dot com`) and look-alike letters from other scripts — each
//! needs tables whose false positives cost more than the spam they catch.
//!
//! **Cost.** [`AutoMod::check`] runs for every message of the room. It is linear in the text: one pass to fold the
//! text into a buffer the struct keeps between calls, one hash lookup per word to find candidate phrases, and one
//! pass per shape rule. After warm-up it allocates nothing except when the duplicate table grows.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{DefaultHasher, Hasher};

/// The thresholds of one room's AutoMod. The `_max` limits are inclusive: a message at one passes, a message past
/// it is flagged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoModConfig {
    /// The room's phrases as stored (`room/{room}/automod`). [`AutoMod::new`] takes them over through
    /// [`AutoMod::add_phrase`]; entries the current limits refuse are skipped rather than failing the room.
    pub banned_phrases: Vec<String>,
    /// Phrases one room may have. Bounds the memory of a room and the candidates a word can have.
    pub phrases_max: usize,
    /// Characters in one phrase after normalisation.
    pub phrase_chars_max: usize,
    /// Below this many cased letters a message is never shouting: "OMG" and "GG" are chat, not abuse.
    pub caps_letters_min: usize,
    /// The share of cased letters, in percent, that may be uppercase. Letters without case (CJK, digits) count for
    /// neither side, so they neither hide nor cause shouting.
    pub caps_percent_max: usize,
    /// Consecutive occurrences of one word allowed ("ha ha ha ha" is laughter; a fifth in a row is flooding).
    pub word_run_max: usize,
    /// Occurrences of one word allowed anywhere in a message. Past it the message is flagged only if that word is
    /// also more than half of the message's words, so that a long sentence may use "the" six times.
    pub word_occurrences_max: usize,
    /// Consecutive identical characters allowed, emoji included ("nooooooooo" is ten characters). Whitespace
    /// breaks a run and is never one: runs of spaces are invisible once rendered.
    pub char_run_max: usize,
    /// How long a sent text is remembered for the duplicate rule, from its latest send.
    pub duplicate_window_ms: u64,
    /// Sends remembered for the duplicate rule. When full, the oldest is forgotten first, so in a flood the
    /// effective window shrinks rather than memory growing. 0 turns the duplicate rule off.
    pub recent_entries_max: usize,
}

impl Default for AutoModConfig {
    fn default() -> AutoModConfig {
        AutoModConfig {
            banned_phrases: Vec::new(),
            phrases_max: 500,
            phrase_chars_max: 100,
            caps_letters_min: 12,
            caps_percent_max: 70,
            word_run_max: 4,
            word_occurrences_max: 5,
            char_run_max: 10,
            duplicate_window_ms: 30_000,
            // 30 s of a room sending ~300 messages a second, far beyond what people read.
            recent_entries_max: 10_000,
        }
    }
}

/// Why AutoMod flagged a message. [`AutoModReason::as_str`] is the `reason` tag of the `automod-held` USERNOTICE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AutoModReason {
    Phrase,
    Caps,
    RepeatedWords,
    RepeatedChars,
    Link,
    Duplicate,
}

impl AutoModReason {
    /// The wire name, as the moderation contract spells it.
    /// The reason named by [`AutoModReason::as_str`].
    pub fn parse(name: &str) -> Option<AutoModReason> {
        [
            AutoModReason::Phrase,
            AutoModReason::Caps,
            AutoModReason::RepeatedWords,
            AutoModReason::RepeatedChars,
            AutoModReason::Link,
            AutoModReason::Duplicate,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == name)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            AutoModReason::Phrase => "phrase",
            AutoModReason::Caps => "caps",
            AutoModReason::RepeatedWords => "repeated_words",
            AutoModReason::RepeatedChars => "repeated_chars",
            AutoModReason::Link => "link",
            AutoModReason::Duplicate => "duplicate",
        }
    }
}

/// A phrase a moderator tried to add that AutoMod refuses. Its `Display` is the text of the NOTICE they get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhraseError {
    /// Nothing a message could match: empty, whitespace or punctuation only.
    Empty,
    TooLong {
        phrase_chars_max: usize,
    },
    Full {
        phrases_max: usize,
    },
}

impl fmt::Display for PhraseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhraseError::Empty => {
                f.write_str("An AutoMod phrase needs at least one letter or digit.")
            }
            PhraseError::TooLong { phrase_chars_max } => {
                write!(
                    f,
                    "An AutoMod phrase can be at most {phrase_chars_max} characters long."
                )
            }
            PhraseError::Full { phrases_max } => write!(
                f,
                "This channel already has the maximum of {phrases_max} AutoMod phrases. Remove one first."
            ),
        }
    }
}

impl std::error::Error for PhraseError {}

/// One room's AutoMod: its phrases, its thresholds and the recent sends the duplicate rule compares against.
#[derive(Debug)]
pub struct AutoMod {
    config: AutoModConfig,
    /// Phrases as moderators see them: lowercase, whitespace collapsed. Parallel to `phrases_folded`.
    phrases: Vec<String>,
    /// The same phrases folded like messages are, words separated by single spaces.
    phrases_folded: Vec<String>,
    /// Phrase indexes by [`word_key`] of their first word, so a message costs one lookup per word however many
    /// phrases the room has. Rebuilt on every change: changes are rare moderator commands, lookups are per word.
    phrase_index: HashMap<u64, Vec<usize>>,
    /// The message being checked, folded. Kept between calls so checking does not allocate.
    folded: String,
    /// Sends in the order they were recorded, for expiry and eviction. May hold stale entries for a key that was
    /// sent again; `recent_latest` tells which entry is current.
    recent_order: VecDeque<RecentSend>,
    /// The latest send of each (user, text fingerprint): its sequence number and time.
    recent_latest: HashMap<RecentKey, (u64, u64)>,
    recent_seq_next: u64,
}

/// A user and the fingerprint of their normalised text.
type RecentKey = (u64, u64);

#[derive(Debug, Clone, Copy)]
struct RecentSend {
    key: RecentKey,
    seq: u64,
    at_ms: u64,
}

impl AutoMod {
    pub fn new(mut config: AutoModConfig) -> AutoMod {
        assert!(
            config.caps_percent_max <= 100,
            "caps_percent_max is a percentage"
        );
        let initial = std::mem::take(&mut config.banned_phrases);
        let mut automod = AutoMod {
            config,
            phrases: Vec::new(),
            phrases_folded: Vec::new(),
            phrase_index: HashMap::new(),
            folded: String::new(),
            recent_order: VecDeque::new(),
            recent_latest: HashMap::new(),
            recent_seq_next: 0,
        };
        for phrase in &initial {
            // A stored phrase the limits now refuse (they were lowered) is dropped rather than making the room
            // unusable; the next save writes the list without it.
            let _ = automod.add_phrase(phrase);
        }
        automod
    }

    /// Checks one message from `user_id`, and remembers it for the duplicate rule whatever the verdict.
    /// `links_allowed` exempts the sender from the link rule (VIPs). Returns the first matching reason in the
    /// order given in the module documentation.
    pub fn check(
        &mut self,
        user_id: u64,
        text: &str,
        links_allowed: bool,
        now_ms: u64,
    ) -> Result<(), AutoModReason> {
        let duplicate = self.note_send((user_id, fingerprint(text)), now_ms);
        fold_into(text, &mut self.folded);
        if self.matches_phrase() {
            return Err(AutoModReason::Phrase);
        }
        if !links_allowed && looks_like_link(text) {
            return Err(AutoModReason::Link);
        }
        if is_shouting(
            text,
            self.config.caps_letters_min,
            self.config.caps_percent_max,
        ) {
            return Err(AutoModReason::Caps);
        }
        if self.has_repeated_words() {
            return Err(AutoModReason::RepeatedWords);
        }
        if has_char_run(text, self.config.char_run_max) {
            return Err(AutoModReason::RepeatedChars);
        }
        if duplicate {
            return Err(AutoModReason::Duplicate);
        }
        Ok(())
    }

    /// Adds a banned phrase, normalised. `Ok(false)` when a phrase with the same folded form is already there.
    pub fn add_phrase(&mut self, phrase: &str) -> Result<bool, PhraseError> {
        let shown = normalise_phrase(phrase);
        if shown.chars().count() > self.config.phrase_chars_max {
            return Err(PhraseError::TooLong {
                phrase_chars_max: self.config.phrase_chars_max,
            });
        }
        let mut folded = String::with_capacity(shown.len());
        fold_into(&shown, &mut folded);
        if folded.is_empty() {
            return Err(PhraseError::Empty);
        }
        if self.phrases_folded.contains(&folded) {
            return Ok(false);
        }
        if self.phrases.len() >= self.config.phrases_max {
            return Err(PhraseError::Full {
                phrases_max: self.config.phrases_max,
            });
        }
        self.phrases.push(shown);
        self.phrases_folded.push(folded);
        self.rebuild_phrase_index();
        Ok(true)
    }

    /// Removes the phrase whose folded form equals `phrase`'s, so a moderator need not retype its exact spelling.
    pub fn remove_phrase(&mut self, phrase: &str) -> bool {
        let mut folded = String::new();
        fold_into(phrase, &mut folded);
        let Some(index) = self.phrases_folded.iter().position(|p| *p == folded) else {
            return false;
        };
        self.phrases.remove(index);
        self.phrases_folded.remove(index);
        self.rebuild_phrase_index();
        true
    }

    /// The room's phrases, normalised, in the order they were added (for `/automod` listings and storage).
    pub fn phrases(&self) -> &[String] {
        &self.phrases
    }

    fn rebuild_phrase_index(&mut self) {
        assert_eq!(self.phrases.len(), self.phrases_folded.len());
        self.phrase_index.clear();
        for (index, phrase) in self.phrases_folded.iter().enumerate() {
            let first = phrase.split(' ').next().unwrap_or_default();
            self.phrase_index
                .entry(word_key(first.as_bytes()))
                .or_default()
                .push(index);
        }
    }

    /// Whether the folded message contains a phrase starting at one of its word starts and ending at a word end.
    fn matches_phrase(&self) -> bool {
        let text = self.folded.as_bytes();
        let mut start = 0;
        while start < text.len() {
            let end = text[start..]
                .iter()
                .position(|&b| b == b' ')
                .map_or(text.len(), |i| start + i);
            if let Some(candidates) = self.phrase_index.get(&word_key(&text[start..end])) {
                let rest = &text[start..];
                if candidates
                    .iter()
                    .any(|&i| folded_starts_with(rest, self.phrases_folded[i].as_bytes()))
                {
                    return true;
                }
            }
            start = end + 1;
        }
        false
    }

    /// Whether one word floods the folded message: a run of it longer than `word_run_max`, or more than
    /// `word_occurrences_max` occurrences that are also a majority of the words. The majority is found with the
    /// Boyer–Moore vote, so this needs no table of counts.
    fn has_repeated_words(&self) -> bool {
        let words = || self.folded.split(' ').filter(|w| !w.is_empty());
        let (mut previous, mut run) = ("", 0usize);
        let (mut candidate, mut votes, mut total) = ("", 0usize, 0usize);
        for word in words() {
            total += 1;
            if word == previous {
                run += 1;
            } else {
                (previous, run) = (word, 1);
            }
            if run > self.config.word_run_max {
                return true;
            }
            if votes == 0 {
                (candidate, votes) = (word, 1);
            } else if word == candidate {
                votes += 1;
            } else {
                votes -= 1;
            }
        }
        if votes == 0 {
            return false;
        }
        let count = words().filter(|&w| w == candidate).count();
        count > self.config.word_occurrences_max && count * 2 > total
    }

    /// Records a send of `key` at `now_ms` and says whether the same key was sent within the window before it.
    fn note_send(&mut self, key: RecentKey, now_ms: u64) -> bool {
        let window_ms = self.config.duplicate_window_ms;
        while let Some(oldest) = self.recent_order.front()
            && now_ms.saturating_sub(oldest.at_ms) >= window_ms
        {
            let oldest = *oldest;
            self.forget_send(oldest);
        }
        let duplicate = self
            .recent_latest
            .get(&key)
            .is_some_and(|&(_, at_ms)| now_ms.saturating_sub(at_ms) < window_ms);
        if self.config.recent_entries_max == 0 {
            return false;
        }
        if self.recent_order.len() >= self.config.recent_entries_max
            && let Some(&oldest) = self.recent_order.front()
        {
            self.forget_send(oldest);
        }
        let seq = self.recent_seq_next;
        self.recent_seq_next += 1;
        self.recent_order.push_back(RecentSend {
            key,
            seq,
            at_ms: now_ms,
        });
        self.recent_latest.insert(key, (seq, now_ms));
        assert!(self.recent_order.len() <= self.config.recent_entries_max);
        assert!(self.recent_latest.len() <= self.recent_order.len());
        duplicate
    }

    /// Drops the oldest entry of `recent_order`, which must be `oldest`, and its key if no later send renewed it.
    fn forget_send(&mut self, oldest: RecentSend) {
        let popped = self.recent_order.pop_front().map(|send| send.seq);
        assert_eq!(popped, Some(oldest.seq));
        if let Entry::Occupied(latest) = self.recent_latest.entry(oldest.key)
            && latest.get().0 == oldest.seq
        {
            latest.remove();
        }
    }
}

/// Lowercase with whitespace collapsed and trimmed: a phrase as moderators see it listed.
fn normalise_phrase(phrase: &str) -> String {
    let mut out = String::with_capacity(phrase.len());
    for word in phrase.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// Writes `text` folded (see the module documentation) into `out`: words of folded letters and digits separated
/// by single spaces, with no space at either end.
fn fold_into(text: &str, out: &mut String) {
    out.clear();
    let mut boundary = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = match c {
            '0' => 'o',
            '3' => 'e',
            '4' | '@' => 'a',
            '5' | '$' => 's',
            '7' => 't',
            // Dropped outright: between letters they only disguise a word, and next to a boundary they change
            // nothing because the boundary is still there.
            '.' | '_' | '-' | '\'' | '\u{2019}' => continue,
            c => c,
        };
        // Combining marks belong to the letter before them, or "é" written decomposed would split a word.
        if c.is_alphanumeric() || ('\u{300}'..='\u{36f}').contains(&c) {
            if boundary && !out.is_empty() {
                out.push(' ');
            }
            boundary = false;
            out.push(c);
        } else {
            boundary = true;
        }
    }
}

/// Whether two bytes of folded text are the same letter, `1` standing for `i` or `l`. Every other byte, including
/// those of multi-byte characters, must be equal; ASCII bytes never occur inside a multi-byte character.
fn same_folded(a: u8, b: u8) -> bool {
    a == b || (a == b'1' && matches!(b, b'i' | b'l')) || (b == b'1' && matches!(a, b'i' | b'l'))
}

/// FNV-1a of a folded word with `1`, `i` and `l` hashed alike, so words that [`same_folded`] equates share a key.
fn word_key(word: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in word {
        let b = if matches!(b, b'1' | b'l') { b'i' } else { b };
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Whether folded `text` starts with folded `phrase` followed by a word boundary.
fn folded_starts_with(text: &[u8], phrase: &[u8]) -> bool {
    text.len() >= phrase.len()
        && text.iter().zip(phrase).all(|(&a, &b)| same_folded(a, b))
        && text.get(phrase.len()).is_none_or(|&b| b == b' ')
}

/// The duplicate rule's view of a text: lowercase, whitespace collapsed and trimmed, hashed so the table holds
/// fixed-size keys. A 64-bit collision between two texts of one user inside one window is not a practical concern.
fn fingerprint(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    let (mut gap, mut started) = (false, false);
    for c in text.chars() {
        if c.is_whitespace() {
            gap = started;
            continue;
        }
        if gap {
            hasher.write_u32(u32::from(' '));
            gap = false;
        }
        for lower in c.to_lowercase() {
            hasher.write_u32(u32::from(lower));
        }
        started = true;
    }
    hasher.finish()
}

/// Whether more than `percent_max` percent of at least `letters_min` cased letters are uppercase.
fn is_shouting(text: &str, letters_min: usize, percent_max: usize) -> bool {
    let (mut cased, mut upper) = (0usize, 0usize);
    for c in text.chars() {
        if c.is_uppercase() {
            cased += 1;
            upper += 1;
        } else if c.is_lowercase() {
            cased += 1;
        }
    }
    cased >= letters_min && upper * 100 > cased * percent_max
}

/// Whether some non-whitespace character occurs more than `run_max` times in a row. ASCII case is ignored so
/// "NOOOOOoooooo" is one run.
fn has_char_run(text: &str, run_max: usize) -> bool {
    let (mut previous, mut run) = (None, 0usize);
    for c in text.chars() {
        if c.is_whitespace() {
            (previous, run) = (None, 0);
            continue;
        }
        let c = c.to_ascii_lowercase();
        if previous == Some(c) {
            run += 1;
        } else {
            (previous, run) = (Some(c), 1);
        }
        if run > run_max {
            return true;
        }
    }
    false
}

/// Top-level domains that count as a link in `word.tld`. Common ones and the free ones spam favours, leaving out
/// those that are also common English words ("is", "it", "at", "to", "so", "in", "us", "no"), since "ok.So" is a
/// missed space far more often than a domain. "me" stays because t.me links are a favourite of scam bots.
const LINK_TLDS: &[&str] = &[
    "com", "net", "org", "io", "tv", "gg", "co", "me", "ly", "gl", "xyz", "info", "biz", "app",
    "dev", "live", "link", "site", "online", "store", "shop", "club", "top", "click", "stream",
    "ru", "uk", "de", "fr", "jp", "cn", "br", "nl", "pl", "eu", "ca", "au", "es", "se", "ch", "kr",
    "ua", "tk", "ml", "ga", "cf", "gq",
];

/// Whether any whitespace-separated token of `text` looks like a URL or a bare domain.
fn looks_like_link(text: &str) -> bool {
    text.split_whitespace().any(token_is_link)
}

fn token_is_link(token: &str) -> bool {
    // Any scheme: `https://`, `http://`, and the `ftp://` or app links a scam might use instead.
    if let Some(at) = token.find("://") {
        let scheme = &token[..at];
        let after = &token[at + 3..];
        if scheme
            .bytes()
            .next_back()
            .is_some_and(|b| b.is_ascii_alphabetic())
            && !after.is_empty()
        {
            return true;
        }
    }
    // Brackets, quotes and sentence punctuation around a domain are not part of it.
    let token = token.trim_matches(|c: char| !c.is_alphanumeric());
    if token.len() > 4 && token.as_bytes()[..4].eq_ignore_ascii_case(b"www.") {
        return true;
    }
    // In `user@example.com` the domain follows the last `@`; in `example.com/path` it ends at the path.
    let token = token.rsplit_once('@').map_or(token, |(_, host)| host);
    let host = token.split(['/', ':', '?', '#']).next().unwrap_or_default();
    let Some((name, tld)) = host.rsplit_once('.') else {
        return false;
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    name.split('.').all(label_ok)
        && LINK_TLDS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(tld))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0_MS: u64 = 1_700_000_000_000;

    fn automod() -> AutoMod {
        AutoMod::new(AutoModConfig::default())
    }

    fn automod_with(phrases: &[&str]) -> AutoMod {
        AutoMod::new(AutoModConfig {
            banned_phrases: phrases.iter().map(|p| p.to_string()).collect(),
            ..AutoModConfig::default()
        })
    }

    /// Checks each text as a different user so the duplicate rule cannot interfere, and reports every mismatch.
    fn assert_verdicts(
        automod: &mut AutoMod,
        links_allowed: bool,
        cases: &[(&str, Result<(), AutoModReason>)],
    ) {
        let mut failures = Vec::new();
        for (user_id, &(text, expected)) in (1u64..).zip(cases) {
            let got = automod.check(user_id, text, links_allowed, T0_MS);
            if got != expected {
                failures.push(format!("{text:?}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn reasons_have_their_wire_names() {
        let cases = [
            (AutoModReason::Phrase, "phrase"),
            (AutoModReason::Caps, "caps"),
            (AutoModReason::RepeatedWords, "repeated_words"),
            (AutoModReason::RepeatedChars, "repeated_chars"),
            (AutoModReason::Link, "link"),
            (AutoModReason::Duplicate, "duplicate"),
        ];
        for (reason, wire) in cases {
            assert_eq!(reason.as_str(), wire);
        }
    }

    #[test]
    fn folding_table() {
        let cases = [
            ("Hello World", "hello world"),
            ("  lots   of\tspace  ", "lots of space"),
            ("a$$ h0le", "ass hole"),
            ("@ss", "ass"),
            ("l33t 5p34k", "leet speak"),
            ("7r4sh", "trash"),
            ("k1ll", "k1ll"),
            ("a.s.s a_s_s a-s-s", "ass ass ass"),
            ("don't", "dont"),
            ("don\u{2019}t", "dont"),
            ("wait...what", "waitwhat"),
            ("hi!!! how?? are, you", "hi how are you"),
            ("ÜBEL Straße", "übel straße"),
            ("cafe\u{301} time", "cafe\u{301} time"),
            ("gg 😂😂 gg", "gg gg"),
            ("!!!", ""),
            ("", ""),
        ];
        let mut out = String::new();
        for (text, folded) in cases {
            fold_into(text, &mut out);
            assert_eq!(out, folded, "folding {text:?}");
        }
    }

    #[test]
    fn phrases_match_across_case_and_obfuscation() {
        let mut automod = automod_with(&["ass", "bad word", "kill", "leet"]);
        let phrase = Err(AutoModReason::Phrase);
        assert_verdicts(
            &mut automod,
            false,
            &[
                ("ass", phrase),
                ("you ASS", phrase),
                ("what an ass!", phrase),
                ("a$$", phrase),
                ("@ss", phrase),
                ("4SS", phrase),
                ("a.s.s", phrase),
                ("a_s_s", phrase),
                ("a-s-s", phrase),
                ("(ass)", phrase),
                ("that is a BAD   WORD right there", phrase),
                ("b4d w0rd", phrase),
                ("bad, word", phrase),
                ("k1ll", phrase),
                ("ki11", phrase),
                ("KILL it", phrase),
                ("1337", phrase),
                ("lol that was sick", Ok(())),
                ("bad words", Ok(())),
                ("word bad", Ok(())),
                ("bad", Ok(())),
                ("kiii", Ok(())),
            ],
        );
    }

    #[test]
    fn phrases_match_whole_words_only() {
        let mut automod = automod_with(&["ass", "bad word"]);
        assert_verdicts(
            &mut automod,
            false,
            &[
                ("class", Ok(())),
                ("assassin", Ok(())),
                ("bass guitar", Ok(())),
                ("grass is green", Ok(())),
                ("my cl4ss", Ok(())),
                ("badword", Ok(())),
                ("bad wordsmith", Ok(())),
                ("a s s", Ok(())),
                ("kick ass", Err(AutoModReason::Phrase)),
                ("ass, class", Err(AutoModReason::Phrase)),
            ],
        );
    }

    #[test]
    fn phrases_match_unicode_text() {
        let mut automod = automod_with(&["ÜBEL", "ばか"]);
        assert_verdicts(
            &mut automod,
            false,
            &[
                ("übel", Err(AutoModReason::Phrase)),
                ("das ist ÜBEL!", Err(AutoModReason::Phrase)),
                ("übelkeit", Ok(())),
                ("お前はばか", Ok(())),
                ("お前は ばか", Err(AutoModReason::Phrase)),
                ("こんにちは 😊", Ok(())),
            ],
        );
    }

    #[test]
    fn phrases_are_normalised_deduplicated_and_removable() {
        let mut automod = automod();
        assert_eq!(automod.add_phrase("  Bad   WORD "), Ok(true));
        assert_eq!(automod.phrases(), ["bad word"]);
        assert_eq!(automod.add_phrase("bad word"), Ok(false));
        assert_eq!(automod.add_phrase("b4d w0rd"), Ok(false));
        assert_eq!(automod.add_phrase("other"), Ok(true));
        assert_eq!(automod.phrases(), ["bad word", "other"]);
        assert_eq!(
            automod.check(1, "such a bad word", false, T0_MS),
            Err(AutoModReason::Phrase)
        );
        assert_eq!(
            automod.check(1, "an other thing", false, T0_MS),
            Err(AutoModReason::Phrase)
        );

        assert!(automod.remove_phrase("BAD word"));
        assert!(!automod.remove_phrase("bad word"));
        assert!(!automod.remove_phrase("never added"));
        assert_eq!(automod.phrases(), ["other"]);
        assert_eq!(automod.check(2, "such a bad word", false, T0_MS), Ok(()));
        // The index was rebuilt: the remaining phrase still matches after the one before it went.
        assert_eq!(
            automod.check(2, "an other thing", false, T0_MS),
            Err(AutoModReason::Phrase)
        );
    }

    #[test]
    fn phrase_limits_are_enforced() {
        let mut automod = AutoMod::new(AutoModConfig {
            phrases_max: 2,
            ..AutoModConfig::default()
        });
        assert_eq!(automod.add_phrase(""), Err(PhraseError::Empty));
        assert_eq!(automod.add_phrase("   \t "), Err(PhraseError::Empty));
        assert_eq!(automod.add_phrase("!!! ..."), Err(PhraseError::Empty));
        let at_limit = "a".repeat(100);
        let over_limit = "a".repeat(101);
        assert_eq!(
            automod.add_phrase(&over_limit),
            Err(PhraseError::TooLong {
                phrase_chars_max: 100
            })
        );
        assert_eq!(automod.add_phrase(&at_limit), Ok(true));
        // Surrounding whitespace is not part of the phrase, so it does not count against the limit.
        assert_eq!(automod.add_phrase(&format!("   {at_limit}   ")), Ok(false));
        assert_eq!(automod.add_phrase("second"), Ok(true));
        assert_eq!(
            automod.add_phrase("third"),
            Err(PhraseError::Full { phrases_max: 2 })
        );
        // Re-adding a phrase that is there is not refused for being full.
        assert_eq!(automod.add_phrase("SECOND"), Ok(false));
        assert_eq!(automod.phrases().len(), 2);
        assert!(automod.remove_phrase("second"));
        assert_eq!(automod.add_phrase("third"), Ok(true));
    }

    #[test]
    fn phrase_errors_read_as_notices() {
        let cases = [
            (
                PhraseError::Empty,
                "An AutoMod phrase needs at least one letter or digit.",
            ),
            (
                PhraseError::TooLong {
                    phrase_chars_max: 100,
                },
                "An AutoMod phrase can be at most 100 characters long.",
            ),
            (
                PhraseError::Full { phrases_max: 500 },
                "This channel already has the maximum of 500 AutoMod phrases. Remove one first.",
            ),
        ];
        for (error, notice) in cases {
            assert_eq!(error.to_string(), notice);
        }
    }

    #[test]
    fn configured_phrases_are_loaded_and_invalid_ones_skipped() {
        let automod = AutoMod::new(AutoModConfig {
            banned_phrases: vec![
                "Spam".into(),
                "  ".into(),
                "x".repeat(101),
                "spam".into(),
                "eggs".into(),
            ],
            ..AutoModConfig::default()
        });
        assert_eq!(automod.phrases(), ["spam", "eggs"]);
    }

    #[test]
    fn caps_table() {
        let mut automod = automod();
        let caps = Err(AutoModReason::Caps);
        assert_verdicts(
            &mut automod,
            false,
            &[
                ("THIS IS SO LOUD RIGHT NOW", caps),
                ("WHY WOULD YOU DO THAT?!", caps),
                ("ABCDEFGHIJKL", caps),
                ("ÄÖÜÉÈÀÇÑÅØÆŒ", caps),
                ("ABCDEFGHIJKLMNOpqrst", caps),   // 15 of 20: 75 %.
                ("ABCDEFGHIJK", Ok(())),          // 11 letters: too short to be shouting.
                ("ABCDEFGHIJKLMNopqrst", Ok(())), // 14 of 20: exactly 70 %.
                ("OMG", Ok(())),
                ("GG", Ok(())),
                ("I'm SO happy", Ok(())),
                ("OMG OMG 123 !!!", Ok(())),
                ("lol that was sick", Ok(())),
                ("HELLO there my friend, how are you", Ok(())),
                ("WOW 你好你好你好你好你好你好你好", Ok(())),
            ],
        );
    }

    #[test]
    fn repeated_words_table() {
        let mut automod = automod();
        let words = Err(AutoModReason::RepeatedWords);
        assert_verdicts(
            &mut automod,
            false,
            &[
                ("spam spam spam spam spam", words),
                ("Spam SPAM spam sPaM spam", words),
                ("spam, spam! spam? spam... spam", words),
                ("hi spam spam spam spam spam bye", words),
                ("spam hi spam hi spam hi spam hi spam hi spam", words),
                ("😂 lol 😂 lol 😂 lol 😂 lol 😂 lol", words),
                ("spam spam spam spam", Ok(())),
                ("ha ha ha ha", Ok(())),
                ("no no no no", Ok(())),
                ("spam hi spam hi spam hi spam hi spam hi", Ok(())),
                ("spam hi spam hi spam hi spam hi spam", Ok(())),
                ("spam a spam b spam c spam d spam e spam f", Ok(())),
                // Six of nineteen: the vote ends on "spam", but it is no majority.
                (
                    "a b c d e f g h spam x spam y spam z spam w spam v spam",
                    Ok(()),
                ),
                (
                    "the cat saw the dog and the bird by the lake near the house on the hill",
                    Ok(()),
                ),
                ("lol that was sick", Ok(())),
            ],
        );
    }

    #[test]
    fn repeated_chars_table() {
        let mut automod = automod();
        let chars = Err(AutoModReason::RepeatedChars);
        assert_verdicts(
            &mut automod,
            false,
            &[
                ("!!!!!!!!!!!", chars),
                ("nooooooooooo", chars),
                ("NOOOOOoooooo", chars),
                ("😂😂😂😂😂😂😂😂😂😂😂", chars),
                ("ああああああああああああ", chars),
                ("!!!!!!!!!!", Ok(())),
                ("noooooooooo", Ok(())),
                ("😂😂😂😂😂😂😂😂😂😂", Ok(())),
                ("hahahahahahahahahahahaha", Ok(())),
                ("a           b", Ok(())),
                ("!!!!! !!!!! !!!!!", Ok(())),
                ("❤️❤️❤️❤️❤️❤️❤️❤️❤️❤️❤️❤️", Ok(())), // Heart and variation selector alternate.
            ],
        );
    }

    #[test]
    fn links_table() {
        let mut automod = automod();
        let link = Err(AutoModReason::Link);
        assert_verdicts(
            &mut automod,
            false,
            &[
                ("http://x", link),
                ("go to HTTPS://EXAMPLE.COM now", link),
                ("ftp://files", link),
                ("www.example.org", link),
                ("WWW.thing", link),
                ("example.com", link),
                ("Example.COM.", link),
                ("join discord.gg/abc", link),
                ("bit.ly/xyz", link),
                ("t.me/scam", link),
                ("(twitch.tv/streamer)", link),
                ("sub-domain.example.co.uk/path?q=1", link),
                ("mail bob@example.com", link),
                ("free-skins.xyz!!", link),
                ("e.g. this", Ok(())),
                ("i.e. that", Ok(())),
                ("3.14", Ok(())),
                ("version 1.2.3", Ok(())),
                ("it is ok.So what", Ok(())),
                ("the end.Next", Ok(())),
                ("wait...what", Ok(())),
                ("www", Ok(())),
                (".com", Ok(())),
                ("..com", Ok(())),
                ("a..com", Ok(())),
                ("ratio 16:9", Ok(())),
                ("://", Ok(())),
                ("@streamer hi", Ok(())),
                ("lol that was sick", Ok(())),
            ],
        );
    }

    #[test]
    fn links_are_allowed_for_exempt_senders_only() {
        let mut automod = automod();
        assert_eq!(
            automod.check(1, "see example.com", false, T0_MS),
            Err(AutoModReason::Link)
        );
        assert_eq!(automod.check(2, "see example.com", true, T0_MS), Ok(()));
        assert_eq!(
            automod.check(3, "https://example.com/x", true, T0_MS),
            Ok(())
        );
        // The exemption is from the link rule only.
        assert_eq!(
            automod.check(4, "LOOK AT THIS EXAMPLE.COM", true, T0_MS),
            Err(AutoModReason::Caps)
        );
    }

    #[test]
    fn reasons_come_in_the_documented_order() {
        let mut automod = automod_with(&["scam"]);
        assert_verdicts(
            &mut automod,
            false,
            &[
                (
                    "BUY SCAM AT SCAM.COM NOW!!!!!!!!!!!!",
                    Err(AutoModReason::Phrase),
                ),
                ("VISIT MY SITE AT EXAMPLE.COM NOW", Err(AutoModReason::Link)),
                ("SPAM SPAM SPAM SPAM SPAM", Err(AutoModReason::Caps)),
                (
                    "spam spam spam spam spam!!!!!!!!!!!",
                    Err(AutoModReason::RepeatedWords),
                ),
            ],
        );
        // A duplicate that also breaks a shape rule is reported for the shape.
        assert_eq!(
            automod.check(99, "hi!!!!!!!!!!!", false, T0_MS),
            Err(AutoModReason::RepeatedChars)
        );
        assert_eq!(
            automod.check(99, "hi!!!!!!!!!!!", false, T0_MS),
            Err(AutoModReason::RepeatedChars)
        );
    }

    #[test]
    fn duplicates_within_the_window_are_flagged() {
        let mut automod = automod();
        assert_eq!(automod.check(1, "hello there", false, T0_MS), Ok(()));
        assert_eq!(
            automod.check(1, "HELLO   there ", false, T0_MS + 1),
            Err(AutoModReason::Duplicate)
        );
        assert_eq!(
            automod.check(1, "\t hello there", false, T0_MS + 2),
            Err(AutoModReason::Duplicate)
        );
        assert_eq!(automod.check(2, "hello there", false, T0_MS + 2), Ok(()));
        assert_eq!(automod.check(1, "hello there!", false, T0_MS + 3), Ok(()));
        assert_eq!(automod.check(1, "hello  where", false, T0_MS + 4), Ok(()));

        let mut automod = automod_with(&[]);
        assert_eq!(automod.check(1, "hello there", false, T0_MS), Ok(()));
        assert_eq!(
            automod.check(1, "hello there", false, T0_MS + 29_999),
            Err(AutoModReason::Duplicate)
        );

        let mut automod = automod_with(&[]);
        assert_eq!(automod.check(1, "hello there", false, T0_MS), Ok(()));
        assert_eq!(
            automod.check(1, "hello there", false, T0_MS + 30_000),
            Ok(())
        );
    }

    #[test]
    fn the_window_runs_from_the_latest_send() {
        let mut automod = automod();
        assert_eq!(automod.check(1, "buy now", false, T0_MS), Ok(()));
        assert_eq!(
            automod.check(1, "buy now", false, T0_MS + 20_000),
            Err(AutoModReason::Duplicate)
        );
        assert_eq!(
            automod.check(1, "buy now", false, T0_MS + 40_000),
            Err(AutoModReason::Duplicate)
        );
        assert_eq!(automod.check(1, "buy now", false, T0_MS + 70_000), Ok(()));
    }

    #[test]
    fn flagged_messages_are_remembered_for_duplicates() {
        let mut automod = automod();
        assert_eq!(
            automod.check(1, "see example.com", false, T0_MS),
            Err(AutoModReason::Link)
        );
        assert_eq!(
            automod.check(1, "see example.com", true, T0_MS + 1_000),
            Err(AutoModReason::Duplicate)
        );
    }

    #[test]
    fn expired_sends_are_dropped() {
        let mut automod = automod();
        for user_id in 0..50 {
            assert_eq!(automod.check(user_id, "same", false, T0_MS), Ok(()));
        }
        assert_eq!(
            automod.check(7, "same", false, T0_MS + 10_000),
            Err(AutoModReason::Duplicate)
        );
        assert_eq!(automod.recent_order.len(), 51);
        assert_eq!(automod.recent_latest.len(), 50);
        assert_eq!(automod.check(1_000, "later", false, T0_MS + 30_000), Ok(()));
        // Only the renewed send of user 7 and the new one are still inside the window.
        assert_eq!(automod.recent_order.len(), 2);
        assert_eq!(automod.recent_latest.len(), 2);
        assert_eq!(
            automod.check(7, "same", false, T0_MS + 39_999),
            Err(AutoModReason::Duplicate)
        );
        assert_eq!(automod.check(8, "same", false, T0_MS + 39_999), Ok(()));
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest() {
        let mut automod = AutoMod::new(AutoModConfig {
            recent_entries_max: 3,
            ..AutoModConfig::default()
        });
        for (offset_ms, text) in [(0, "one"), (1, "two"), (2, "three"), (3, "four")] {
            assert_eq!(automod.check(1, text, false, T0_MS + offset_ms), Ok(()));
            assert!(automod.recent_order.len() <= 3);
        }
        assert_eq!(automod.recent_latest.len(), 3);
        // "one" was evicted to make room for "four"; the later ones are still remembered.
        assert_eq!(automod.check(1, "one", false, T0_MS + 10), Ok(()));
        assert_eq!(
            automod.check(1, "four", false, T0_MS + 11),
            Err(AutoModReason::Duplicate)
        );
        // A key renewed after its older entry is evicted stays remembered through its newer entry.
        assert_eq!(
            automod.check(1, "four", false, T0_MS + 12),
            Err(AutoModReason::Duplicate)
        );
        assert_eq!(
            automod.check(1, "four", false, T0_MS + 13),
            Err(AutoModReason::Duplicate)
        );
        assert_eq!(automod.recent_order.len(), 3);
        assert_eq!(automod.recent_latest.len(), 1);

        let mut off = AutoMod::new(AutoModConfig {
            recent_entries_max: 0,
            ..AutoModConfig::default()
        });
        assert_eq!(off.check(1, "again", false, T0_MS), Ok(()));
        assert_eq!(off.check(1, "again", false, T0_MS), Ok(()));
        assert!(off.recent_order.is_empty());
    }

    #[test]
    fn normal_chat_passes() {
        let mut automod = automod_with(&["ass", "scam"]);
        let chat = [
            "lol that was sick",
            "GG",
            "I'm SO happy",
            "OMG",
            "e.g. this",
            "i.e. that one",
            "pi is 3.14 btw",
            "hahahaha",
            "😂😂😂",
            "PogChamp PogChamp PogChamp",
            "can you play the class assassin next?",
            "お疲れ様でした！",
            "Привет всем, как дела?",
            "¿Qué tal? Très bien, danke schön",
            "@streamer what's the song?",
            "no no no no",
            "10/10 would watch again",
            "",
        ];
        let cases: Vec<_> = chat.iter().map(|&text| (text, Ok(()))).collect();
        assert_verdicts(&mut automod, false, &cases);
    }

    #[test]
    fn checking_is_deterministic() {
        let texts = [
            "hi",
            "HELLO EVERYBODY IN CHAT",
            "hi",
            "spam.com",
            "hi",
            "x x x x x",
        ];
        let run = || {
            let mut automod = automod_with(&["x"]);
            (0u64..)
                .zip(texts)
                .map(|(i, text)| automod.check(i % 2, text, false, T0_MS + i * 7_000))
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        assert!(first.contains(&Err(AutoModReason::Duplicate)), "{first:?}");
    }
}

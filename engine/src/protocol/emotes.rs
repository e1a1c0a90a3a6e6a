//! The global emote set: codes a message may use anywhere, by id.
//!
//! Emote-only mode accepts a message made of these codes alone (separated by spaces). The codes are the product's
//! own (prefix `twi`), so they cannot collide with ordinary words.

/// `(id, code)` of every global emote. Ids are stable: clients cache images by them.
pub const GLOBAL_EMOTES: [(&str, &str); 24] = [
    ("1", "twiSkibidi"),
    ("2", "twiRizz"),
    ("3", "twiSigma"),
    ("4", "twiNoCap"),
    ("5", "twiBussin"),
    ("6", "twiSheesh"),
    ("7", "twiAura"),
    ("8", "twiOhio"),
    ("9", "twiFanum"),
    ("10", "twiMewing"),
    ("11", "twiCringe"),
    ("12", "twiBased"),
    ("13", "twiLOL"),
    ("14", "twiHype"),
    ("15", "twiGG"),
    ("16", "twiLove"),
    ("17", "twiCry"),
    ("18", "twiRage"),
    ("19", "twiShock"),
    ("20", "twiWave"),
    ("21", "twiPirate"),
    ("22", "twiQuill"),
    ("23", "twiChart"),
    ("24", "twiSkull"),
];

/// The id of the emote with this exact code (codes are case-sensitive, as on Twitch).
pub fn emote_id(code: &str) -> Option<&'static str> {
    GLOBAL_EMOTES
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(id, _)| *id)
}

/// Whether `text` is one or more emote codes and nothing else (emote-only mode).
pub fn is_emote_only(text: &str) -> bool {
    let mut words = text.split_whitespace().peekable();
    words.peek().is_some() && words.all(|word| emote_id(word).is_some())
}

/// Twitch's `emotes` tag for `text`: `id:start-end,start-end/id:…`, grouped by emote in order of first use, with
/// inclusive code-point offsets of each whole-word occurrence (Twitch matches codes only as whole words separated
/// by spaces). For an ACTION (`/me`) pass the text inside the ACTION wrapper, as Twitch counts from there.
/// Empty when there are none.
pub fn emotes_tag(text: &str) -> String {
    // (emote index, start, end) per occurrence, in text order.
    let mut found: Vec<(usize, usize, usize)> = Vec::new();
    let mut chars = 0usize;
    for word in text.split(' ') {
        let len = word.chars().count();
        if let Some(index) = GLOBAL_EMOTES.iter().position(|(_, code)| *code == word) {
            found.push((index, chars, chars + len - 1));
        }
        chars += len + 1;
    }
    let mut order: Vec<usize> = Vec::new();
    for &(index, _, _) in &found {
        if !order.contains(&index) {
            order.push(index);
        }
    }
    let mut tag = String::new();
    for (n, index) in order.iter().enumerate() {
        if n > 0 {
            tag.push('/');
        }
        tag.push_str(GLOBAL_EMOTES[*index].0);
        tag.push(':');
        let ranges: Vec<String> = found
            .iter()
            .filter(|(i, _, _)| i == index)
            .map(|(_, start, end)| format!("{start}-{end}"))
            .collect();
        tag.push_str(&ranges.join(","));
    }
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emotes_tag_gives_code_point_offsets_of_whole_words() {
        let table = [
            ("twiGG", "15:0-4"),
            ("ggs twiGG", "15:4-8"),
            ("twiGG twiHype twiGG", "15:0-4,14-18/14:6-12"),
            ("héllo wörld twiLOL", "13:12-17"),
            ("🦀 twiSkull", "24:2-9"),
            ("twiGG! twiGGx xtwiGG", ""),
            ("no emotes here", ""),
            ("", ""),
            ("two  spaces twiGG", "15:12-16"),
        ];
        for (text, want) in table {
            assert_eq!(emotes_tag(text), want, "{text:?}");
        }
    }

    #[test]
    fn emote_only_means_codes_and_spaces_alone() {
        for text in ["twiGG", "twiGG  twiHype", " twiSkull "] {
            assert!(is_emote_only(text), "{text:?}");
        }
        for text in [
            "",
            "  ",
            "gg",
            "twiGG gg",
            "twigg",
            "twiGG!",
            "twiGGtwiHype",
        ] {
            assert!(!is_emote_only(text), "{text:?}");
        }
    }

    #[test]
    fn ids_and_codes_are_unique() {
        let mut ids: Vec<_> = GLOBAL_EMOTES.iter().map(|(id, _)| *id).collect();
        let mut codes: Vec<_> = GLOBAL_EMOTES.iter().map(|(_, code)| *code).collect();
        ids.sort_unstable();
        ids.dedup();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(ids.len(), GLOBAL_EMOTES.len());
        assert_eq!(codes.len(), GLOBAL_EMOTES.len());
    }
}

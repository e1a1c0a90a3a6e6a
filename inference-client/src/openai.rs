//! The OpenAI-compatible `/v1/completions` wire format, sans IO: request bodies out, completions in.
//!
//! One request carries a list of prompts; the response's choices carry the index of the prompt they complete.
//! Responses are untrusted: a body that is not valid UTF-8 or that escapes lone surrogates (which strict JSON
//! parsers reject) is repaired rather than failing the whole batch, and every choice is sanitised by the caller.

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind};

/// The parameters shared by every completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionParams {
    pub model: String,
    pub max_tokens: u32,
    pub temperature: f32,
    /// Lowers the odds of tokens the completion already used, by how often it used them (OpenAI semantics).
    pub frequency_penalty: f32,
    /// Sequences that end a completion (see [`crate::ChatTemplate::stop_sequences`]).
    pub stop: &'static [&'static str],
}

#[derive(Serialize)]
struct CompletionRequest<'a> {
    model: &'a str,
    prompt: &'a [&'a str],
    max_tokens: u32,
    temperature: f32,
    frequency_penalty: f32,
    stop: &'static [&'static str],
}

/// Encodes a completion request for `prompts` (one choice per prompt).
pub fn encode_completion_request(params: &CompletionParams, prompts: &[&str]) -> Vec<u8> {
    let request = CompletionRequest {
        model: &params.model,
        prompt: prompts,
        max_tokens: params.max_tokens,
        temperature: params.temperature,
        frequency_penalty: params.frequency_penalty,
        stop: params.stop,
    };
    // Serialising plain strings and numbers into a `Vec` cannot fail.
    serde_json::to_vec(&request).unwrap_or_default()
}

#[derive(Deserialize)]
struct CompletionResponse {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    index: usize,
    text: String,
}

/// Decodes a completion response for a request of `prompt_count` prompts: the raw text of each prompt's completion,
/// `None` where the response has no choice for it.
pub fn decode_completion_response(
    body: &[u8],
    prompt_count: usize,
) -> Result<Vec<Option<String>>, Error> {
    let response: CompletionResponse = match serde_json::from_slice(body) {
        Ok(response) => response,
        Err(_) => {
            let repaired = repair_json(body);
            serde_json::from_str(&repaired).map_err(|source| {
                Error::new(ErrorKind::Decode, format!("completion response: {source}"))
            })?
        }
    };
    let mut texts = vec![None; prompt_count];
    for choice in response.choices {
        if let Some(slot) = texts.get_mut(choice.index) {
            *slot = Some(choice.text);
        }
    }
    Ok(texts)
}

/// Makes an almost-JSON body parseable: invalid UTF-8 becomes U+FFFD, and `\u` escapes of lone surrogates become
/// `\uFFFD`. Everything else is left for the parser to judge.
pub fn repair_json(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'\\' {
            index += 1;
            continue;
        }
        if bytes.get(index + 1) != Some(&b'u') {
            // Any other escape is two bytes; skipping both keeps `\\u` from being read as a `\u` escape.
            index += 2;
            continue;
        }
        let Some(unit) = hex_unit(bytes, index + 2) else {
            index += 2;
            continue;
        };
        if (0xD800..0xDC00).contains(&unit) {
            let low = (bytes.get(index + 6) == Some(&b'\\') && bytes.get(index + 7) == Some(&b'u'))
                .then(|| hex_unit(bytes, index + 8))
                .flatten();
            if low.is_some_and(|low| (0xDC00..0xE000).contains(&low)) {
                index += 12;
                continue;
            }
        } else if !(0xDC00..0xE000).contains(&unit) {
            index += 6;
            continue;
        }
        out.push_str(&text[copied..index]);
        out.push_str("\\uFFFD");
        index += 6;
        copied = index;
    }
    out.push_str(&text[copied.min(text.len())..]);
    out
}

fn hex_unit(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_list_of_prompts() {
        let params = CompletionParams {
            model: "tiny".into(),
            max_tokens: 40,
            temperature: 0.5,
            frequency_penalty: 0.0,
            stop: &["\n"],
        };
        let body = encode_completion_request(&params, &["a \"quoted\" prompt", "b"]);
        let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(value["model"], "tiny");
        assert_eq!(value["prompt"][0], "a \"quoted\" prompt");
        assert_eq!(value["prompt"][1], "b");
        assert_eq!(value["max_tokens"], 40);
        assert_eq!(value["stop"][0], "\n");
    }

    #[test]
    fn decodes_choices_by_index() {
        let body = br#"{"id":"x","choices":[{"index":1,"text":"second","finish_reason":"length"},
            {"index":0,"text":"first\u0017"},{"index":7,"text":"out of range"}],"usage":{}}"#;
        let texts = decode_completion_response(body, 3).expect("decodes");
        assert_eq!(
            texts,
            vec![
                Some("first\u{17}".to_owned()),
                Some("second".to_owned()),
                None
            ]
        );
    }

    #[test]
    fn repairs_broken_bodies() {
        let lone = br#"{"choices":[{"index":0,"text":"a\ud800b\udc00c\ud83d\ude00d\\ud800"}]}"#;
        let texts = decode_completion_response(lone, 1).expect("repaired");
        assert_eq!(texts[0].as_deref(), Some("a\u{FFFD}b\u{FFFD}c😀d\\ud800"));

        let mut invalid_utf8 = br#"{"choices":[{"index":0,"text":"x"#.to_vec();
        invalid_utf8.extend_from_slice(&[0xFF, 0xC3]);
        invalid_utf8.extend_from_slice(br#"y"}]}"#);
        let texts = decode_completion_response(&invalid_utf8, 1).expect("repaired");
        assert_eq!(texts[0].as_deref(), Some("x\u{FFFD}\u{FFFD}y"));

        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"{\"choices\":5}",
            b"\\u12",
            b"\\ud800\\u",
        ] {
            assert!(decode_completion_response(bad, 1).is_err(), "{bad:?}");
        }
    }
}

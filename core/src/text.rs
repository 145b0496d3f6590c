//! Text to speak: the sanitizer and the stream segmenter.
//!
//! [`sanitize`] turns LLM output into something a speech engine can read: markdown, emoji, tags
//! and control characters go, whitespace is normalised, and text with nothing speakable left
//! becomes empty (the caller then skips synthesis but still reports the utterance as ended).
//!
//! [`Segmenter`] cuts a stream of LLM chunks (`tts.stream`) into speakable segments: an early,
//! short first segment so the caller hears something quickly (a sentence end, a pause mark after
//! a few characters, or a cut at a word boundary once the text gets long), then whole sentences,
//! with an emergency split for very long unpunctuated text. The end of the stream flushes the
//! rest. A `.` between digits (`3.14`) and common abbreviations (`e.g.`, `Dr.`) are not sentence
//! ends, unlike in the original, which split prices in two.

/// Cleans text for speech. Returns an empty string when nothing speakable remains.
pub fn sanitize(input: &str) -> String {
    let mut text = String::with_capacity(input.len());
    let mut in_fence = false;
    for line in input.split('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            // Code is not read aloud: drop fenced blocks, fences included.
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        text.push_str(&strip_line_markup(line));
        text.push('\n');
    }
    let text = strip_inline_markup(&text);
    let text = normalise_whitespace(&text);
    // Leading punctuation and symbols are not spoken ("，你好" → "你好", "- item" → "item").
    let text = text.trim_start_matches(|c: char| !c.is_alphanumeric());
    if text.chars().any(char::is_alphanumeric) {
        text.trim().to_owned()
    } else {
        String::new()
    }
}

/// Markdown that lives at the start of a line: headings, block quotes, list markers, rules.
fn strip_line_markup(line: &str) -> String {
    let mut s = line.trim_start();
    loop {
        let before = s;
        s = s
            .trim_start_matches('#')
            .trim_start_matches('>')
            .trim_start();
        for marker in ["- ", "* ", "+ ", "• "] {
            if let Some(rest) = s.strip_prefix(marker) {
                s = rest.trim_start();
            }
        }
        // Ordered list markers: "1. " or "1) ".
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && digits < 4 {
            let rest = &s[digits..];
            if let Some(r) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
                s = r.trim_start();
            }
        }
        if s == before {
            break;
        }
    }
    s.to_owned()
}

/// Inline markdown, tags, emoji and odd characters.
fn strip_inline_markup(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // Images: ![alt](url) → nothing. Links: [text](url) → text.
        if (c == '!' && chars.get(i + 1) == Some(&'[')) || c == '[' {
            let open = if c == '!' { i + 1 } else { i };
            if let Some((label_end, url_end)) = link_at(&chars, open) {
                if c == '[' {
                    out.extend(&chars[open + 1..label_end]);
                }
                i = url_end + 1;
                continue;
            }
        }
        // Tags: <speak>, </b>, <br/> → nothing (their text stays).
        if c == '<'
            && let Some(end) = tag_end(&chars, i)
        {
            i = end + 1;
            out.push(' ');
            continue;
        }
        match c {
            '*' | '_' | '`' | '~' => {}
            '\u{feff}' | '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{2060}' | '\u{fe0e}'
            | '\u{fe0f}' => {}
            '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{2032}' => out.push('\''),
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{2033}' => out.push('"'),
            '\u{2026}' => out.push_str("..."),
            '\u{2013}' | '\u{2014}' => out.push_str(" - "),
            '<' | '>' | '&' | '|' => out.push(' '),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c if is_emoji(c) => {}
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// `[label](url)` starting at `open`: the indices of `]` and `)`.
fn link_at(chars: &[char], open: usize) -> Option<(usize, usize)> {
    let label_end = (open + 1..chars.len()).find(|&j| chars[j] == ']' || chars[j] == '\n')?;
    if chars[label_end] != ']' || chars.get(label_end + 1) != Some(&'(') {
        return None;
    }
    let url_end =
        (label_end + 2..chars.len()).find(|&j| chars[j] == ')' || chars[j].is_whitespace())?;
    (chars[url_end] == ')').then_some((label_end, url_end))
}

/// A tag `<name ...>`, `</name>` or `<name/>` starting at `i`: the index of its `>`.
fn tag_end(chars: &[char], i: usize) -> Option<usize> {
    let first = *chars.get(i + 1)?;
    if !(first.is_ascii_alphabetic() || first == '/' || first == '!') {
        return None;
    }
    (i + 1..chars.len().min(i + 256))
        .find(|&j| chars[j] == '>')
        .filter(|&j| !chars[i + 1..j].contains(&'<'))
}

/// Pictographs, emoji and their modifiers (not letters, digits or CJK).
fn is_emoji(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF   // mahjong, cards, emoticons, symbols, transport, flags, supplemental
        | 0x2600..=0x27BF   // misc symbols, dingbats
        | 0x2B00..=0x2BFF   // arrows and stars
        | 0x2300..=0x23FF   // technical (⌚ ⏰)
        | 0x2190..=0x21FF   // arrows
        | 0x25A0..=0x25FF   // geometric shapes
        | 0x3030 | 0x303D | 0x3297 | 0x3299
        | 0xE0020..=0xE007F // tag characters
    )
}

/// Collapses runs of spaces, keeps at most two newlines in a row, trims lines.
fn normalise_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut newlines = 0;
    for line in text.split('\n') {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            newlines += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if newlines > 1 { "\n\n" } else { "\n" });
        }
        newlines = 1;
        out.push_str(&words.join(" "));
    }
    out
}

/// Limits of the segmenter, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLimits {
    /// The first segment may end at a pause mark once it has this many characters.
    pub first_min_chars: usize,
    /// Without punctuation, the first segment is cut at a word boundary beyond this length.
    pub first_max_chars: usize,
    /// Later segments are whole sentences, split at a word boundary beyond this length.
    pub max_chars: usize,
}

impl Default for SegmentLimits {
    fn default() -> Self {
        SegmentLimits {
            first_min_chars: 6,
            first_max_chars: 40,
            max_chars: 200,
        }
    }
}

/// Cuts one utterance's stream of text into segments.
#[derive(Debug, Clone)]
pub struct Segmenter {
    limits: SegmentLimits,
    buffer: String,
    first_done: bool,
}

const SENTENCE_END: &[char] = &['.', '!', '?', '。', '！', '？', '\n'];
const PAUSE: &[char] = &[',', ';', ':', '，', '、', '；', '：'];
const CLOSERS: &[char] = &['"', '\'', ')', ']', '”', '’', '」', '』', '）'];
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "no", "jr", "sr", "prof",
];

impl Segmenter {
    /// A segmenter for one utterance.
    pub fn new(limits: SegmentLimits) -> Self {
        Segmenter {
            limits,
            buffer: String::new(),
            first_done: false,
        }
    }

    /// Adds a chunk; returns the segments that became complete.
    pub fn push(&mut self, chunk: &str) -> Vec<String> {
        self.buffer.push_str(chunk);
        let mut out = Vec::new();
        while let Some(cut) = self.next_cut(false) {
            self.emit(cut, &mut out);
        }
        out
    }

    /// The stream ended: returns the remaining segments.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(cut) = self.next_cut(true) {
            self.emit(cut, &mut out);
        }
        let rest = std::mem::take(&mut self.buffer);
        let rest = rest.trim();
        if !rest.is_empty() {
            out.push(rest.to_owned());
            self.first_done = true;
        }
        out
    }

    /// Whether text is waiting for more.
    pub fn is_empty(&self) -> bool {
        self.buffer.trim().is_empty()
    }

    fn emit(&mut self, cut: usize, out: &mut Vec<String>) {
        let rest = self.buffer.split_off(cut);
        let seg = std::mem::replace(&mut self.buffer, rest);
        let seg = seg.trim();
        if !seg.is_empty() {
            out.push(seg.to_owned());
            self.first_done = true;
        }
        let trimmed = self.buffer.trim_start().len();
        let start = self.buffer.len() - trimmed;
        self.buffer.drain(..start);
    }

    /// Byte offset where the next segment ends, if one is complete.
    fn next_cut(&self, at_end: bool) -> Option<usize> {
        let b = &self.buffer;
        if b.trim().is_empty() {
            return None;
        }
        let chars = b.chars().count();
        if !self.first_done {
            let min = self.limits.first_min_chars;
            // Whichever comes first: a sentence end, or a pause mark after `min` characters.
            let sentence = self.boundary(SENTENCE_END, 1, at_end);
            let pause = self.boundary(PAUSE, min, at_end);
            if let Some(end) = sentence.into_iter().chain(pause).min() {
                return Some(end);
            }
            if chars > self.limits.first_max_chars {
                return Some(word_cut(b, self.limits.first_max_chars));
            }
            return None;
        }
        if let Some(end) = self.boundary(SENTENCE_END, 1, at_end) {
            return Some(end);
        }
        (chars > self.limits.max_chars).then(|| word_cut(b, self.limits.max_chars))
    }

    /// The first mark from `marks` that ends a segment with at least `min_chars` characters
    /// before it: the byte offset just after the mark (and any closing quotes).
    fn boundary(&self, marks: &[char], min_chars: usize, at_end: bool) -> Option<usize> {
        let b = &self.buffer;
        let mut count = 0;
        let mut it = b.char_indices().peekable();
        while let Some((i, c)) = it.next() {
            count += 1;
            if !marks.contains(&c) {
                continue;
            }
            // Swallow closing quotes and brackets after the mark.
            let mut end = i + c.len_utf8();
            while let Some(&(j, n)) = it.peek() {
                if CLOSERS.contains(&n) {
                    end = j + n.len_utf8();
                    it.next();
                } else {
                    break;
                }
            }
            let next = b[end..].chars().next();
            let wide = (c as u32) > 0x2FFF; // CJK marks need no space after them
            let ends = match next {
                Some(n) => wide || c == '\n' || n.is_whitespace(),
                // At the buffer's end: a mark that could continue ("3." + "14") waits.
                None => at_end || !self.ambiguous(i, c),
            };
            if ends && !self.is_abbreviation(i, c) && count >= min_chars {
                return Some(end);
            }
        }
        None
    }

    /// A `.` right after a digit may be a decimal point.
    fn ambiguous(&self, i: usize, c: char) -> bool {
        c == '.'
            && self.buffer[..i]
                .chars()
                .next_back()
                .is_some_and(|p| p.is_ascii_digit())
    }

    /// `Dr.`, `e.g.`: a `.` that ends a known abbreviation is not a sentence end.
    fn is_abbreviation(&self, i: usize, c: char) -> bool {
        if c != '.' {
            return false;
        }
        let word_start = self.buffer[..i]
            .rfind(|ch: char| ch.is_whitespace() || ch == '(')
            .map_or(0, |p| p + 1);
        let word = self.buffer[word_start..i].to_lowercase();
        ABBREVIATIONS.contains(&word.as_str())
    }
}

/// Byte offset to cut `s` at or before `max` characters: the last whitespace before it, or a
/// hard cut when there is none.
fn word_cut(s: &str, max: usize) -> usize {
    let hard = s.char_indices().nth(max).map_or(s.len(), |(i, _)| i);
    s[..hard]
        .rfind(char::is_whitespace)
        .filter(|&i| i > 0)
        .unwrap_or(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizer_table() {
        let cases: &[(&str, &str)] = &[
            // Markdown.
            ("**Sure**, I can hear you.", "Sure, I can hear you."),
            (
                "## Title\n- item one\n- item two",
                "Title\nitem one\nitem two",
            ),
            ("1. First\n2) Second", "First\nSecond"),
            ("> quoted *text*", "quoted text"),
            (
                "See [the docs](https://x.example/a_b) now",
                "See the docs now",
            ),
            ("Look ![a cat](cat.png) here", "Look here"),
            ("Run `ls -l` please", "Run ls -l please"),
            ("Code:\n```rust\nfn main() {}\n```\nDone.", "Code:\nDone."),
            ("snake_case and *stars*", "snakecase and stars"),
            // Tags, SSML-ish.
            ("<speak>bad</speak>", "bad"),
            ("Hello<break time=\"1s\"/>there", "Hello there"),
            ("a < b & c > d", "a b c d"),
            // Emoji, alone or inside text.
            ("😊", ""),
            ("Great job! 👍🏽🎉", "Great job!"),
            ("I ❤️ Rust", "I Rust"),
            ("👨‍👩‍👧 family", "family"),
            // Only punctuation: nothing to say.
            ("---", ""),
            ("* * *", ""),
            ("...", ""),
            ("，", ""),
            ("?!", ""),
            // CJK is speech.
            ("，你好", "你好"),
            ("## 标题\n- 项目一", "标题\n项目一"),
            ("今天天气很好。", "今天天气很好。"),
            ("こんにちは", "こんにちは"),
            ("안녕하세요", "안녕하세요"),
            // Control characters, BOM, zero-width, smart punctuation, whitespace.
            ("\u{feff}Hi\u{0007} there\u{200b}!", "Hi there!"),
            (
                "Say \u{201c}Quoted\u{201d} \u{2018}x\u{2019}\u{2026}",
                "Say \"Quoted\" 'x'...",
            ),
            (
                "  lots   of\t\tspace  \n\n\n\nnext  ",
                "lots of space\n\nnext",
            ),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), *want, "sanitize({input:?})");
        }
    }

    #[test]
    fn sanitizer_never_panics_on_odd_input() {
        for s in [
            "[",
            "![",
            "[a](",
            "<",
            "<a",
            "</",
            "```",
            "\u{0}",
            "1.",
            "#",
            ">",
            "[x]",
            "<<<>>>",
            "\u{10ffff}",
        ] {
            let _ = sanitize(s);
        }
    }

    fn seg(limits: SegmentLimits, chunks: &[&str]) -> Vec<String> {
        let mut s = Segmenter::new(limits);
        let mut out = vec![];
        for c in chunks {
            out.extend(s.push(c));
        }
        out.extend(s.finish());
        out
    }

    fn live(limits: SegmentLimits, chunks: &[&str]) -> Vec<Vec<String>> {
        let mut s = Segmenter::new(limits);
        chunks.iter().map(|c| s.push(c)).collect()
    }

    const L: SegmentLimits = SegmentLimits {
        first_min_chars: 6,
        first_max_chars: 40,
        max_chars: 120,
    };

    #[test]
    fn first_segment_rules() {
        // A sentence end makes the first segment at once.
        assert_eq!(
            live(L, &["Hi! How are", " you?"]),
            vec![vec!["Hi!"], vec!["How are you?"]]
        );
        // A pause mark counts once the segment has the minimum length...
        assert_eq!(
            live(L, &["Well, okay then, let me see"]),
            vec![vec!["Well, okay then,"]]
        );
        // ...not before.
        assert_eq!(live(L, &["So, what"]), vec![Vec::<String>::new()]);
        // No punctuation: cut at a word boundary beyond the maximum.
        let long = "this is a long first sentence without any punctuation at all in it";
        let got = live(L, &[long]);
        assert_eq!(got[0], vec!["this is a long first sentence without"]);
        // CJK pause marks need no space.
        assert_eq!(
            live(L, &["你好，我是小智。"]),
            vec![vec!["你好，我是小智。"]]
        );
        assert_eq!(
            seg(
                SegmentLimits {
                    first_min_chars: 2,
                    ..L
                },
                &["你好，", "我是小智。"]
            ),
            vec!["你好，", "我是小智。"]
        );
    }

    #[test]
    fn later_segments_are_whole_sentences() {
        let got = live(L, &["First one. Then", ", a pause", " and more. Last"]);
        assert_eq!(
            got,
            vec![vec!["First one."], vec![], vec!["Then, a pause and more."]]
        );
        assert_eq!(
            seg(L, &["One. Two, three. Four"]),
            vec!["One.", "Two, three.", "Four"]
        );
    }

    #[test]
    fn emergency_split_for_long_unpunctuated_text() {
        let words = "word ".repeat(60);
        let got = seg(L, &["Start. ", &words]);
        assert_eq!(got[0], "Start.");
        assert!(got.len() >= 3, "{got:?}");
        assert!(got[1..].iter().all(|s| s.chars().count() <= 120), "{got:?}");
        assert_eq!(got[1..].join(" ").split_whitespace().count(), 60);
        // No whitespace at all: a hard cut.
        let blob = "x".repeat(300);
        let got = seg(L, &["Start. ", &blob]);
        assert_eq!(got[1].len(), 120);
    }

    #[test]
    fn decimal_numbers_and_abbreviations_do_not_end_sentences() {
        assert_eq!(
            seg(L, &["The price is 3.", "14 dollars today. Thanks"]),
            vec!["The price is 3.14 dollars today.", "Thanks"]
        );
        assert_eq!(
            seg(L, &["Version 2.5 is out. Yes"]),
            vec!["Version 2.5 is out.", "Yes"]
        );
        assert_eq!(
            seg(L, &["Ask Dr. Smith, e.g. tomorrow. Ok"]),
            vec!["Ask Dr. Smith,", "e.g. tomorrow.", "Ok"]
        );
        // A digit-dot at the very end waits, and the end of the stream settles it.
        assert_eq!(live(L, &["It costs 3."]), vec![Vec::<String>::new()]);
        assert_eq!(seg(L, &["It costs 3."]), vec!["It costs 3."]);
    }

    #[test]
    fn stream_end_flushes_and_quotes_stay_with_their_sentence() {
        assert_eq!(
            seg(L, &["He said \"stop.\" Then", " left"]),
            vec!["He said \"stop.\"", "Then left"]
        );
        assert_eq!(seg(L, &["no punctuation"]), vec!["no punctuation"]);
        assert_eq!(seg(L, &["   "]), Vec::<String>::new());
        let mut s = Segmenter::new(L);
        assert!(s.push("Half a").is_empty());
        assert!(!s.is_empty());
        assert_eq!(s.finish(), vec!["Half a"]);
        assert!(s.is_empty());
    }
}

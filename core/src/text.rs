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
//! ends, unlike in the original, which split prices in two. No segment is longer than its limit
//! (`first_max_chars`, then `max_chars`), whether its text arrived whole or in chunks.
//!
//! Both run on the call's media worker and see text a dialog app chose, so both are linear in
//! their input: no arrangement of brackets, tags, marks or whitespace makes them look at a
//! character more than a few times (the original took seconds on 200 000 `[`).

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
        // Counting stops at 4: a longer number is no list marker, and a run of digits is not
        // counted again on every pass of the loop.
        let digits = s.bytes().take(4).take_while(u8::is_ascii_digit).count();
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
///
/// Linear in the input: the searches for a link's `]` and `)` and a tag's `>` go through
/// [`NextMatch`], so no character is looked at more than a few times however the brackets are
/// arranged (`[[[[…`, `[a](` repeated, `<a<a<a…`).
fn strip_inline_markup(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut label_ends = NextMatch::new(|c| c == ']' || c == '\n');
    let mut url_ends = NextMatch::new(|c| c == ')' || c.is_whitespace());
    let mut angles = NextMatch::new(|c| c == '<' || c == '>');
    // Inside a link's label: where the label ends, and where its `(url)` ends.
    let mut in_label: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some((label_end, url_end)) = in_label
            && i == label_end
        {
            in_label = None;
            i = url_end + 1;
            continue;
        }
        // Images: ![alt](url) → nothing. Links: [text](url) → text, which is cleaned like the
        // rest (its markup, tags, emoji and control characters go too).
        if in_label.is_none() && ((c == '!' && chars.get(i + 1) == Some(&'[')) || c == '[') {
            let open = if c == '!' { i + 1 } else { i };
            if let Some((label_end, url_end)) =
                link_at(&chars, open, &mut label_ends, &mut url_ends)
            {
                if c == '[' {
                    in_label = Some((label_end, url_end));
                    i = open + 1;
                } else {
                    i = url_end + 1;
                }
                continue;
            }
        }
        // Tags: <speak>, </b>, <br/> → nothing (their text stays). In a label, a tag must end
        // within it.
        if c == '<'
            && let Some(end) = tag_end(&chars, i, &mut angles)
            && in_label.is_none_or(|(label_end, _)| end < label_end)
        {
            i = end + 1;
            out.push(' ');
            continue;
        }
        push_plain(&mut out, c);
        i += 1;
    }
    out
}

/// One character outside links and tags: markup and invisible characters go, typographic
/// punctuation becomes what a speech engine reads.
fn push_plain(out: &mut String, c: char) {
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
}

/// The first index at or after a position whose character matches a predicate, for a series of
/// queries whose positions never decrease (the scan in [`strip_inline_markup`] only moves
/// forward). The last answer is remembered: a later query that starts at or before it gets it
/// again without a scan, and one that starts past it scans from there, so over all queries each
/// character is looked at once. A query that goes backwards is still answered right, by a scan.
struct NextMatch<F> {
    matches: F,
    /// The last query's position and its answer (`chars.len()` for none).
    last: Option<(usize, usize)>,
}

impl<F: Fn(char) -> bool> NextMatch<F> {
    fn new(matches: F) -> Self {
        NextMatch {
            matches,
            last: None,
        }
    }

    /// The first index `>= from` whose character matches, or `chars.len()` when none does.
    fn at_or_after(&mut self, chars: &[char], from: usize) -> usize {
        if let Some((at, found)) = self.last
            && at <= from
            && from <= found
        {
            // Nothing between the last query and its answer matched.
            self.last = Some((from, found));
            return found;
        }
        let start = from.min(chars.len());
        let found = chars[start..]
            .iter()
            .position(|&c| (self.matches)(c))
            .map_or(chars.len(), |k| start + k);
        self.last = Some((from, found));
        found
    }
}

/// `[label](url)` starting at `open`: the indices of `]` and `)`.
fn link_at(
    chars: &[char],
    open: usize,
    label_ends: &mut NextMatch<impl Fn(char) -> bool>,
    url_ends: &mut NextMatch<impl Fn(char) -> bool>,
) -> Option<(usize, usize)> {
    let label_end = label_ends.at_or_after(chars, open + 1);
    if chars.get(label_end) != Some(&']') || chars.get(label_end + 1) != Some(&'(') {
        return None;
    }
    let url_end = url_ends.at_or_after(chars, label_end + 2);
    (chars.get(url_end) == Some(&')')).then_some((label_end, url_end))
}

/// A tag `<name ...>`, `</name>` or `<name/>` starting at `i`: the index of its `>`, which must
/// come within 256 characters and before any other `<`.
fn tag_end(
    chars: &[char],
    i: usize,
    angles: &mut NextMatch<impl Fn(char) -> bool>,
) -> Option<usize> {
    let first = *chars.get(i + 1)?;
    if !(first.is_ascii_alphabetic() || first == '/' || first == '!') {
        return None;
    }
    // `first` is neither `<` nor `>`, so the first angle bracket after `i` decides: a `>` closes
    // the tag, a `<` means it is not one.
    let j = angles.at_or_after(chars, i + 1);
    (j < i + 256 && chars.get(j) == Some(&'>')).then_some(j)
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
    /// The first segment is cut at a word boundary beyond this length (when it has no sentence
    /// end or pause mark within it).
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
    /// Text received; `buffer[start..]` is not cut yet. The part before `start` was emitted and
    /// goes at the end of each [`push`](Self::push), so cutting many segments out of one big
    /// chunk does not copy the rest of the chunk once per segment.
    buffer: String,
    /// Where the text not cut yet begins; it never begins with whitespace.
    start: usize,
    first_done: bool,
}

const SENTENCE_END: &[char] = &['.', '!', '?', '。', '！', '？', '\n'];
const PAUSE: &[char] = &[',', ';', ':', '，', '、', '；', '：'];
const CLOSERS: &[char] = &['"', '\'', ')', ']', '”', '’', '」', '』', '）'];
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "no", "jr", "sr", "prof",
];
/// The longest entry of [`ABBREVIATIONS`], in bytes: a longer word is not looked up.
const ABBREVIATION_MAX_BYTES: usize = 4;

impl Segmenter {
    /// A segmenter for one utterance.
    pub fn new(limits: SegmentLimits) -> Self {
        Segmenter {
            limits,
            buffer: String::new(),
            start: 0,
            first_done: false,
        }
    }

    /// Adds a chunk; returns the segments that became complete.
    ///
    /// Linear in the chunk: every cut looks at most at the next segment's worth of text (the
    /// limit of its length), and text that waits for more is never longer than that limit.
    pub fn push(&mut self, chunk: &str) -> Vec<String> {
        self.buffer.push_str(chunk);
        self.skip_whitespace();
        let mut out = Vec::new();
        while let Some(cut) = self.next_cut(false) {
            self.emit(cut, &mut out);
        }
        self.compact();
        out
    }

    /// The stream ended: returns the remaining segments.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(cut) = self.next_cut(true) {
            self.emit(cut, &mut out);
        }
        let rest = self.pending().trim();
        if !rest.is_empty() {
            out.push(rest.to_owned());
            self.first_done = true;
        }
        self.buffer.clear();
        self.start = 0;
        out
    }

    /// Whether text is waiting for more.
    pub fn is_empty(&self) -> bool {
        self.pending().trim().is_empty()
    }

    /// The text not cut yet.
    fn pending(&self) -> &str {
        &self.buffer[self.start..]
    }

    /// Moves `start` past whitespace (only the whitespace is looked at).
    fn skip_whitespace(&mut self) {
        let rest = self.pending();
        self.start += rest.len() - rest.trim_start().len();
    }

    /// Drops the text already emitted (what is left is at most one segment's worth).
    fn compact(&mut self) {
        self.buffer.drain(..self.start);
        self.start = 0;
    }

    /// Emits the next `cut` bytes of the pending text as a segment.
    fn emit(&mut self, cut: usize, out: &mut Vec<String>) {
        let seg = self.pending()[..cut].trim();
        if !seg.is_empty() {
            out.push(seg.to_owned());
            self.first_done = true;
        }
        self.start += cut;
        self.skip_whitespace();
    }

    /// The longest segment that may be cut now, in characters (at least 1, so every cut makes
    /// progress).
    fn limit(&self) -> usize {
        if self.first_done {
            self.limits.max_chars.max(1)
        } else {
            self.limits.first_max_chars.max(1)
        }
    }

    /// Byte offset (in the pending text) where the next segment ends, if one is complete.
    fn next_cut(&self, at_end: bool) -> Option<usize> {
        let b = self.pending();
        if b.is_empty() {
            return None;
        }
        let limit = self.limit();
        if let Some(end) = self.boundary(b, limit, at_end) {
            return Some(end);
        }
        // No sentence end (or, for the first segment, pause mark) within the limit: cut at a
        // word boundary once there is more text than fits.
        b.char_indices()
            .nth(limit)
            .is_some()
            .then(|| word_cut(b, limit))
    }

    /// The first mark within the first `limit` characters of `b` that ends a segment: a
    /// sentence end, or, for the first segment, a pause mark after at least `first_min_chars`
    /// characters. Returns the byte offset just after the mark and any closing quotes and
    /// brackets (which stay within the limit too).
    fn boundary(&self, b: &str, limit: usize, at_end: bool) -> Option<usize> {
        let pause_min = (!self.first_done).then_some(self.limits.first_min_chars);
        let mut count = 0;
        let mut it = b.char_indices().peekable();
        while let Some((i, c)) = it.next() {
            count += 1;
            if count > limit {
                return None;
            }
            let min_chars = if SENTENCE_END.contains(&c) {
                1
            } else if let Some(min) = pause_min
                && PAUSE.contains(&c)
            {
                min
            } else {
                continue;
            };
            let at_mark = count;
            // Swallow closing quotes and brackets after the mark.
            let mut end = i + c.len_utf8();
            while let Some(&(j, n)) = it.peek() {
                if !CLOSERS.contains(&n) || count == limit {
                    break;
                }
                end = j + n.len_utf8();
                count += 1;
                it.next();
            }
            let next = b[end..].chars().next();
            let wide = (c as u32) > 0x2FFF; // CJK marks need no space after them
            let ends = match next {
                Some(n) => wide || c == '\n' || n.is_whitespace(),
                // At the buffer's end: a mark that could continue ("3." + "14") waits.
                None => at_end || !ambiguous(b, i, c),
            };
            if ends && at_mark >= min_chars && !is_abbreviation(b, i, c) {
                return Some(end);
            }
        }
        None
    }
}

/// A `.` at byte `i` of `b` right after a digit may be a decimal point.
fn ambiguous(b: &str, i: usize, c: char) -> bool {
    c == '.'
        && b[..i]
            .chars()
            .next_back()
            .is_some_and(|p| p.is_ascii_digit())
}

/// `Dr.`, `e.g.`: a `.` at byte `i` of `b` that ends a known abbreviation is not a sentence end.
fn is_abbreviation(b: &str, i: usize, c: char) -> bool {
    if c != '.' {
        return false;
    }
    // Only the last few bytes can hold an abbreviation; looking no further keeps this constant
    // time however long the word before the mark is.
    let mut from = i.saturating_sub(ABBREVIATION_MAX_BYTES + 1);
    while !b.is_char_boundary(from) {
        from -= 1;
    }
    let tail = &b[from..i];
    // Just after the last space or `(` (which may be several bytes long: U+00A0, U+3000).
    let word_start = tail
        .char_indices()
        .rev()
        .find(|&(_, ch)| ch.is_whitespace() || ch == '(')
        .map_or(0, |(p, ch)| p + ch.len_utf8());
    if word_start == 0 && from > 0 {
        // The word goes on before the tail: longer than any abbreviation.
        return false;
    }
    let word = &tail[word_start..];
    ABBREVIATIONS.iter().any(|a| a.eq_ignore_ascii_case(word))
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

#[cfg(test)]
pub(crate) mod properties {
    //! Properties of the sanitizer and the segmenter on arbitrary and hostile text, and a time
    //! bound on inputs that made the original quadratic. Case counts default to a few hundred;
    //! `PROPTEST_CASES` overrides them.
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    /// `default` cases unless `PROPTEST_CASES` says otherwise.
    pub(crate) fn cases(default: u32) -> ProptestConfig {
        let mut config = ProptestConfig::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            config.cases = default;
        }
        config
    }

    /// Pieces that mean something to the sanitizer or the segmenter.
    const PIECES: &[&str] = &[
        "[",
        "]",
        "(",
        ")",
        "![",
        "](",
        "<",
        ">",
        "</",
        "<b>",
        "/>",
        "*",
        "**",
        "_",
        "`",
        "```",
        "~",
        "~~~",
        "#",
        "## ",
        "> ",
        "- ",
        "* ",
        "1. ",
        "2) ",
        "&",
        "|",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        "\r",
        ".",
        ". ",
        "!",
        "?",
        ",",
        ";",
        ":",
        "。",
        "，",
        "、",
        "！",
        "\"",
        "'",
        "”",
        "」",
        "）",
        "3.",
        "14",
        "Dr.",
        "e.g.",
        "etc.",
        "word",
        "Hello",
        "你好",
        "😊",
        "👍🏽",
        "\u{200d}",
        "\u{fe0f}",
        "\u{feff}",
        "\u{1b}",
        "\u{0}",
        "\u{7f}",
        "\u{85}",
        "\u{2026}",
        "\u{2014}",
        "\u{201c}",
        "\u{2018}",
        "\u{e0041}",
        "\u{10ffff}",
    ];

    /// Text made of meaningful pieces and arbitrary strings (up to 80 of them).
    pub(crate) fn hostile_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(PIECES).prop_map(str::to_owned),
                1 => any::<String>(),
            ],
            0..80,
        )
        .prop_map(|parts| parts.concat())
    }

    fn limits() -> impl Strategy<Value = SegmentLimits> {
        (0usize..12, 0usize..60, 0usize..240).prop_map(|(min, first, max)| SegmentLimits {
            first_min_chars: min,
            first_max_chars: first,
            max_chars: max,
        })
    }

    fn without_whitespace(s: &str) -> String {
        s.chars().filter(|c| !c.is_whitespace()).collect()
    }

    /// Cuts `text` into chunks at the given fractions of its length (on char boundaries).
    fn chunks(text: &str, cuts: &[usize]) -> Vec<String> {
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let mut at: Vec<usize> = cuts
            .iter()
            .filter(|_| !bounds.is_empty())
            .map(|c| bounds[c % bounds.len()])
            .collect();
        at.sort_unstable();
        at.dedup();
        let mut out = Vec::new();
        let mut from = 0;
        for a in at {
            out.push(text[from..a].to_owned());
            from = a;
        }
        out.push(text[from..].to_owned());
        out
    }

    fn segment(limits: SegmentLimits, chunks: &[impl AsRef<str>]) -> Vec<String> {
        let mut s = Segmenter::new(limits);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c.as_ref()));
        }
        out.extend(s.finish());
        assert!(s.is_empty(), "nothing is left after the end");
        out
    }

    proptest! {
        #![proptest_config(cases(1000))]

        #[test]
        fn sanitized_text_is_clean_speech(input in hostile_text()) {
            let out = sanitize(&input);
            for c in out.chars() {
                prop_assert!(c == '\n' || !c.is_control(), "control {c:?} in {out:?}");
                prop_assert!(!is_emoji(c), "emoji {c:?} in {out:?}");
                prop_assert!(!"*_`~<>&|\u{200b}\u{200d}\u{feff}\u{fe0f}".contains(c), "markup {c:?} in {out:?}");
            }
            prop_assert_eq!(out.trim(), out.as_str(), "trimmed");
            prop_assert!(!out.contains("  ") && !out.contains("\n\n\n"), "{:?}", out);
            prop_assert!(!out.contains(" \n") && !out.contains("\n "), "{:?}", out);
            // Empty, or it starts with something to say.
            prop_assert!(out.chars().next().is_none_or(char::is_alphanumeric), "{:?}", out);
            prop_assert!(out.chars().count() <= 3 * input.chars().count());
        }

        #[test]
        fn sanitizer_survives_arbitrary_strings(input in any::<String>()) {
            let out = sanitize(&input);
            prop_assert!(out.chars().all(|c| c == '\n' || !c.is_control()));
        }

        #[test]
        fn segments_keep_all_text_and_respect_the_limits(
            text in hostile_text(),
            limits in limits(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let parts = chunks(&text, &cuts);
            let segments = segment(limits, &parts);
            let longest = limits.first_max_chars.max(limits.max_chars).max(1);
            for s in &segments {
                prop_assert!(!s.is_empty());
                prop_assert_eq!(s.trim(), s.as_str());
                prop_assert!(s.chars().count() <= longest, "{} chars > {}: {:?}", s.chars().count(), longest, s);
            }
            // Cuts only drop the whitespace around them.
            prop_assert_eq!(without_whitespace(&segments.concat()), without_whitespace(&text));
        }
    }

    /// Inputs that made the original quadratic (seconds to tens of seconds at 200 000 chars).
    fn adversarial() -> Vec<(&'static str, String)> {
        const N: usize = 200_000;
        vec![
            ("open brackets", "[".repeat(N) + "."),
            ("image openers", "![".repeat(N / 2)),
            ("nested brackets", "[".repeat(N / 2) + &"]".repeat(N / 2)),
            ("link openers", "[a](".repeat(N / 4)),
            ("stars", "*".repeat(N)),
            ("angles", "<".repeat(N)),
            ("open tags", "<a".repeat(N / 2)),
            ("digits with dots", "1.".repeat(N / 2)),
            ("digits", "7".repeat(N)),
            ("abbreviations", "Dr. ".repeat(N / 4)),
            ("tiny sentences", "a. ".repeat(N / 3)),
            ("closers", "a.".to_owned() + &")".repeat(N)),
            ("emoji", "😊".repeat(N)),
            ("cjk pauses", "，".repeat(N)),
            ("newlines", "\n".repeat(N)),
            ("spaces", " ".repeat(N)),
            ("list markers", "- ".repeat(N / 2)),
            ("one long word", "x".repeat(N)),
        ]
    }

    /// Generous for a test build on a busy machine; the linear code takes a few ms.
    const BOUND: Duration = Duration::from_millis(200);

    #[test]
    fn hostile_text_is_handled_in_linear_time() {
        for (name, text) in adversarial() {
            let t = Instant::now();
            let _ = sanitize(&text);
            let sanitizing = t.elapsed();
            let t = Instant::now();
            let segments = segment(SegmentLimits::default(), &[text.as_str()]);
            let segmenting = t.elapsed();
            // The same text in 1 000 chunks, as a stream.
            let parts = chunks(&text, &(1..1000).map(|k| k * 997).collect::<Vec<_>>());
            let t = Instant::now();
            let streamed = segment(SegmentLimits::default(), &parts);
            let streaming = t.elapsed();
            assert!(
                sanitizing < BOUND && segmenting < BOUND && streaming < BOUND,
                "{name}: sanitize {sanitizing:?}, segment {segmenting:?}, stream {streaming:?}"
            );
            assert_eq!(
                without_whitespace(&segments.concat()),
                without_whitespace(&text),
                "{name}"
            );
            assert_eq!(
                without_whitespace(&streamed.concat()),
                without_whitespace(&text),
                "{name}"
            );
        }
    }

    #[test]
    fn a_multibyte_space_before_an_abbreviation_check_does_not_panic() {
        // The original sliced one byte after the space, inside U+00A0 / U+3000 / U+0085.
        for space in ["\u{a0}", "\u{3000}", "\u{85}"] {
            let text = format!("Hello{space}there. Next{space}Dr. Smith.");
            let got = segment(SegmentLimits::default(), &[text.as_str()]);
            assert_eq!(without_whitespace(&got.concat()), without_whitespace(&text));
        }
    }

    #[test]
    fn markup_in_a_link_label_is_stripped_like_any_other() {
        assert_eq!(
            sanitize("[**bold**\u{1b}[2J 😊](https://x.example)"),
            "bold[2J"
        );
        assert_eq!(sanitize("See [a <b>tag</b>](u) here"), "See a tag here");
    }

    #[test]
    fn a_long_sentence_is_split_whether_it_arrives_whole_or_in_chunks() {
        let l = SegmentLimits {
            first_min_chars: 6,
            first_max_chars: 40,
            max_chars: 60,
        };
        let long = format!("Start. {}end.", "word ".repeat(30));
        let whole = segment(l, &[long.as_str()]);
        let streamed = segment(l, &chunks(&long, &[10, 50, 90, 130]));
        assert_eq!(whole, streamed);
        assert!(whole.iter().all(|s| s.chars().count() <= 60), "{whole:?}");
    }
}

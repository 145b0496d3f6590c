//! Session control: what the dialog app may change about its call while it runs
//! (`session.update`), and the call's session as it stands.
//!
//! A `session.update` names, for this call from now on, the speech engine profile and options
//! (voice, speed), the recognizer's profile and options (language, model, grammar, prompt), the
//! endpointing silence, and whether barge-in is on. The update is all or nothing: every option
//! is checked first (its shape here, what the chosen engine accepts in the engines), and if any
//! is unknown or invalid the app gets one `error` event naming each of them and nothing changes.
//!
//! Choosing a profile starts from that profile's own settings: options set before on the old
//! profile are dropped, options in the same update apply on top.

use serde_json::Value;

/// Most bytes of a voice, model, language or profile name.
pub const MAX_NAME_BYTES: usize = 64;
/// Most bytes of a recognizer prompt (a hint of words to expect, for the engines that take one).
pub const MAX_PROMPT_BYTES: usize = 1024;
/// Speed factors a session may ask for (OpenAI's speech API takes the same range).
pub const SPEED_RANGE: std::ops::RangeInclusive<f32> = 0.25..=4.0;
/// Endpointing silence a session may ask for, ms.
pub const END_SILENCE_RANGE: std::ops::RangeInclusive<u32> = 100..=5000;
/// The profile name meaning the configured top-level engine (`[tts]` / `[asr]` themselves).
pub const DEFAULT_PROFILE: &str = "default";

/// One option the update cannot take, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct OptionError {
    /// Its dotted name, e.g. `tts.speed`.
    pub option: String,
    /// What is wrong with it.
    pub reason: String,
}

impl OptionError {
    /// An error for `option`.
    pub fn new(option: impl Into<String>, reason: impl Into<String>) -> OptionError {
        OptionError {
            option: option.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.option, self.reason)
    }
}

/// An engine option that the engine refused, named as the engine knows it (`voice`, `grammar`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{option}: {reason}")]
pub struct InvalidOption {
    /// The option's name within its engine's options.
    pub option: &'static str,
    /// Why.
    pub reason: String,
}

impl InvalidOption {
    /// `option` refused for `reason`.
    pub fn new(option: &'static str, reason: impl Into<String>) -> InvalidOption {
        InvalidOption {
            option,
            reason: reason.into(),
        }
    }
}

/// Options of a speech engine for one call; `None` keeps the profile's setting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TtsOptions {
    /// The voice, as the engine names it.
    pub voice: Option<String>,
    /// Speaking speed, 1.0 the engine's normal (a factor within [`SPEED_RANGE`]).
    pub speed: Option<f32>,
}

/// Options of a recognizer for one call; `None` keeps the profile's setting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AsrOptions {
    /// Language of the caller's speech (ISO 639-1), for the engines that take a hint.
    pub language: Option<String>,
    /// The model, for the engines that offer several.
    pub model: Option<String>,
    /// A grammar, by the name the configuration gives it (`""`: the engine's default).
    pub grammar: Option<String>,
    /// Words to expect, for the engines that take a prompt.
    pub prompt: Option<String>,
}

/// What one `session.update` asks to change; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionUpdate {
    /// `tts.profile`.
    pub tts_profile: Option<String>,
    /// `tts.voice`, `tts.speed`.
    pub tts: TtsOptions,
    /// `asr.profile`.
    pub asr_profile: Option<String>,
    /// `asr.language`, `asr.model`, `asr.grammar`, `asr.prompt`.
    pub asr: AsrOptions,
    /// `listen.end_silence_ms`.
    pub end_silence_ms: Option<u32>,
    /// `barge_in.enabled`.
    pub barge_in: Option<bool>,
}

impl SessionUpdate {
    /// The `session` object that asks for this update (the dialog app's side of the protocol).
    pub fn to_value(&self) -> Value {
        let mut tts = serde_json::Map::new();
        put(&mut tts, "profile", &self.tts_profile);
        put(&mut tts, "voice", &self.tts.voice);
        if let Some(speed) = self.tts.speed {
            tts.insert("speed".into(), f64::from(speed).into());
        }
        let mut asr = serde_json::Map::new();
        put(&mut asr, "profile", &self.asr_profile);
        put(&mut asr, "language", &self.asr.language);
        put(&mut asr, "model", &self.asr.model);
        put(&mut asr, "grammar", &self.asr.grammar);
        put(&mut asr, "prompt", &self.asr.prompt);
        let mut out = serde_json::Map::new();
        if !tts.is_empty() {
            out.insert("tts".into(), tts.into());
        }
        if !asr.is_empty() {
            out.insert("asr".into(), asr.into());
        }
        if let Some(ms) = self.end_silence_ms {
            let mut listen = serde_json::Map::new();
            listen.insert("end_silence_ms".into(), ms.into());
            out.insert("listen".into(), listen.into());
        }
        if let Some(on) = self.barge_in {
            let mut b = serde_json::Map::new();
            b.insert("enabled".into(), on.into());
            out.insert("barge_in".into(), b.into());
        }
        out.into()
    }
}

/// A call's session as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The speech engine's profile ([`DEFAULT_PROFILE`] for `[tts]`).
    pub tts_profile: String,
    /// Options over that profile.
    pub tts: TtsOptions,
    /// The recognizer's profile ([`DEFAULT_PROFILE`] for `[asr]`).
    pub asr_profile: String,
    /// Options over that profile.
    pub asr: AsrOptions,
    /// Silence that ends an utterance, ms.
    pub end_silence_ms: u32,
    /// Caller speech interrupts voicegate's.
    pub barge_in: bool,
}

impl Session {
    /// A new call's session: the configured engines and listening settings.
    pub fn new(end_silence_ms: u32, barge_in: bool) -> Session {
        Session {
            tts_profile: DEFAULT_PROFILE.to_owned(),
            tts: TtsOptions::default(),
            asr_profile: DEFAULT_PROFILE.to_owned(),
            asr: AsrOptions::default(),
            end_silence_ms,
            barge_in,
        }
    }

    /// The session after `u`. A new profile starts from its own settings (earlier options are
    /// dropped); the options in `u` apply on top.
    pub fn updated(&self, u: &SessionUpdate) -> Session {
        let mut s = self.clone();
        if let Some(p) = &u.tts_profile {
            s.tts_profile.clone_from(p);
            s.tts = TtsOptions::default();
        }
        if let Some(p) = &u.asr_profile {
            s.asr_profile.clone_from(p);
            s.asr = AsrOptions::default();
        }
        overlay(&mut s.tts.voice, &u.tts.voice);
        if u.tts.speed.is_some() {
            s.tts.speed = u.tts.speed;
        }
        overlay(&mut s.asr.language, &u.asr.language);
        overlay(&mut s.asr.model, &u.asr.model);
        overlay(&mut s.asr.grammar, &u.asr.grammar);
        overlay(&mut s.asr.prompt, &u.asr.prompt);
        if let Some(ms) = u.end_silence_ms {
            s.end_silence_ms = ms;
        }
        if let Some(on) = u.barge_in {
            s.barge_in = on;
        }
        s
    }

    /// The session as `session.updated` shows it: every setting, options the profile decides
    /// left out.
    pub fn to_value(&self) -> Value {
        let mut tts = serde_json::Map::new();
        tts.insert("profile".into(), self.tts_profile.clone().into());
        put(&mut tts, "voice", &self.tts.voice);
        if let Some(speed) = self.tts.speed {
            tts.insert("speed".into(), f64::from(speed).into());
        }
        let mut asr = serde_json::Map::new();
        asr.insert("profile".into(), self.asr_profile.clone().into());
        put(&mut asr, "language", &self.asr.language);
        put(&mut asr, "model", &self.asr.model);
        put(&mut asr, "grammar", &self.asr.grammar);
        put(&mut asr, "prompt", &self.asr.prompt);
        let mut listen = serde_json::Map::new();
        listen.insert("end_silence_ms".into(), self.end_silence_ms.into());
        let mut barge_in = serde_json::Map::new();
        barge_in.insert("enabled".into(), self.barge_in.into());
        let mut out = serde_json::Map::new();
        out.insert("tts".into(), tts.into());
        out.insert("asr".into(), asr.into());
        out.insert("listen".into(), listen.into());
        out.insert("barge_in".into(), barge_in.into());
        out.into()
    }
}

fn overlay(slot: &mut Option<String>, new: &Option<String>) {
    if new.is_some() {
        slot.clone_from(new);
    }
}

fn put(m: &mut serde_json::Map<String, Value>, key: &str, v: &Option<String>) {
    if let Some(v) = v {
        m.insert(key.into(), v.clone().into());
    }
}

/// Reads the `session` object of a `session.update`: what it asks for, and every option it
/// cannot take (unknown names, wrong types, values out of range). Keys are matched without
/// regard to case, as everywhere in the dialog protocol.
pub fn parse_update(session: Option<&Value>) -> (SessionUpdate, Vec<OptionError>) {
    let mut u = SessionUpdate::default();
    let mut errors = Vec::new();
    let Some(session) = session else {
        errors.push(OptionError::new("session", "missing: want an object"));
        return (u, errors);
    };
    let Some(top) = session.as_object() else {
        errors.push(OptionError::new("session", "want an object"));
        return (u, errors);
    };
    for (key, value) in top {
        match key.to_ascii_lowercase().as_str() {
            "tts" => section(value, "tts", &mut errors, |k, v, errors| {
                match k {
                    "profile" => u.tts_profile = profile(v, "tts.profile", errors),
                    "voice" => u.tts.voice = name(v, "tts.voice", MAX_NAME_BYTES, errors),
                    "speed" => u.tts.speed = speed(v, errors),
                    _ => return false,
                }
                true
            }),
            "asr" => section(value, "asr", &mut errors, |k, v, errors| {
                match k {
                    "profile" => u.asr_profile = profile(v, "asr.profile", errors),
                    "language" => u.asr.language = language(v, errors),
                    "model" => u.asr.model = name(v, "asr.model", MAX_NAME_BYTES, errors),
                    "grammar" => u.asr.grammar = grammar(v, errors),
                    "prompt" => u.asr.prompt = name(v, "asr.prompt", MAX_PROMPT_BYTES, errors),
                    _ => return false,
                }
                true
            }),
            "listen" => section(value, "listen", &mut errors, |k, v, errors| {
                match k {
                    "end_silence_ms" => u.end_silence_ms = end_silence(v, errors),
                    _ => return false,
                }
                true
            }),
            "barge_in" => section(value, "barge_in", &mut errors, |k, v, errors| {
                match (k, v.as_bool()) {
                    ("enabled", Some(b)) => u.barge_in = Some(b),
                    ("enabled", None) => {
                        errors.push(OptionError::new("barge_in.enabled", "want true or false"))
                    }
                    _ => return false,
                }
                true
            }),
            _ => errors.push(unknown(key)),
        }
    }
    (u, errors)
}

/// Reads one section's keys with `each`, which says whether it knew the key.
fn section(
    value: &Value,
    name: &str,
    errors: &mut Vec<OptionError>,
    mut each: impl FnMut(&str, &Value, &mut Vec<OptionError>) -> bool,
) {
    let Some(obj) = value.as_object() else {
        errors.push(OptionError::new(name, "want an object"));
        return;
    };
    for (k, v) in obj {
        if !each(k.to_ascii_lowercase().as_str(), v, errors) {
            errors.push(unknown(&format!("{name}.{k}")));
        }
    }
}

fn unknown(option: &str) -> OptionError {
    OptionError::new(
        crate::untrusted::shown(option).to_string(),
        "unknown option",
    )
}

fn name(v: &Value, option: &str, max: usize, errors: &mut Vec<OptionError>) -> Option<String> {
    match v.as_str() {
        Some(s) if s.len() > max => {
            errors.push(OptionError::new(option, format!("longer than {max} bytes")));
            None
        }
        Some(s) if s.chars().any(char::is_control) => {
            errors.push(OptionError::new(option, "has a control character"));
            None
        }
        Some(s) => Some(s.trim().to_owned()),
        None => {
            errors.push(OptionError::new(option, "want a string"));
            None
        }
    }
}

/// A profile name: letters, digits, `-` and `_`, at most [`MAX_NAME_BYTES`].
pub fn valid_profile_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn profile(v: &Value, option: &str, errors: &mut Vec<OptionError>) -> Option<String> {
    let s = name(v, option, MAX_NAME_BYTES, errors)?;
    if !valid_profile_name(&s) {
        errors.push(OptionError::new(
            option,
            "want a profile name (letters, digits, - and _)",
        ));
        return None;
    }
    Some(s)
}

fn grammar(v: &Value, errors: &mut Vec<OptionError>) -> Option<String> {
    let s = name(v, "asr.grammar", MAX_NAME_BYTES, errors)?;
    if !s.is_empty() && !valid_profile_name(&s) {
        errors.push(OptionError::new(
            "asr.grammar",
            "want a configured grammar's name, or \"\" for the engine's default",
        ));
        return None;
    }
    Some(s)
}

fn language(v: &Value, errors: &mut Vec<OptionError>) -> Option<String> {
    let s = name(v, "asr.language", MAX_NAME_BYTES, errors)?;
    let ok =
        s.is_empty() || ((2..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase()));
    if !ok {
        errors.push(OptionError::new(
            "asr.language",
            "want an ISO 639-1 code such as \"en\" (or \"\": detect)",
        ));
        return None;
    }
    Some(s)
}

fn speed(v: &Value, errors: &mut Vec<OptionError>) -> Option<f32> {
    match v.as_f64() {
        Some(x) if SPEED_RANGE.contains(&(x as f32)) => Some(x as f32),
        _ => {
            errors.push(OptionError::new(
                "tts.speed",
                format!(
                    "want a number from {} to {}",
                    SPEED_RANGE.start(),
                    SPEED_RANGE.end()
                ),
            ));
            None
        }
    }
}

fn end_silence(v: &Value, errors: &mut Vec<OptionError>) -> Option<u32> {
    match v.as_u64() {
        Some(ms) if END_SILENCE_RANGE.contains(&(ms as u32)) && ms <= u64::from(u32::MAX) => {
            Some(ms as u32)
        }
        _ => {
            errors.push(OptionError::new(
                "listen.end_silence_ms",
                format!(
                    "want whole milliseconds from {} to {}",
                    END_SILENCE_RANGE.start(),
                    END_SILENCE_RANGE.end()
                ),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> (SessionUpdate, Vec<OptionError>) {
        parse_update(Some(&v))
    }

    #[test]
    fn a_full_update_is_read_with_keys_in_any_case() {
        let (u, errors) = parse(json!({
            "TTS": {"Profile": "nova", "voice": "shimmer", "speed": 1.25},
            "asr": {"profile": "de", "language": "de", "model": "m", "grammar": "yesno",
                    "prompt": "Ja, nein"},
            "listen": {"end_silence_ms": 400},
            "barge_in": {"enabled": false}
        }));
        assert_eq!(errors, vec![]);
        assert_eq!(u.tts_profile.as_deref(), Some("nova"));
        assert_eq!(u.tts.voice.as_deref(), Some("shimmer"));
        assert_eq!(u.tts.speed, Some(1.25));
        assert_eq!(u.asr_profile.as_deref(), Some("de"));
        assert_eq!(u.asr.language.as_deref(), Some("de"));
        assert_eq!(u.asr.grammar.as_deref(), Some("yesno"));
        assert_eq!(u.asr.prompt.as_deref(), Some("Ja, nein"));
        assert_eq!(u.end_silence_ms, Some(400));
        assert_eq!(u.barge_in, Some(false));
        assert_eq!(parse(u.to_value()), (u, vec![]));
    }

    #[test]
    fn every_unknown_or_invalid_option_is_named() {
        let (_, errors) = parse(json!({
            "tts": {"speed": 9, "pitch": 2, "voice": 3},
            "asr": {"language": "English", "grammar": "../etc/passwd"},
            "listen": {"end_silence_ms": 50},
            "barge_in": {"enabled": "yes"},
            "vad": {}
        }));
        let mut names: Vec<&str> = errors.iter().map(|e| e.option.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "asr.grammar",
                "asr.language",
                "barge_in.enabled",
                "listen.end_silence_ms",
                "tts.pitch",
                "tts.speed",
                "tts.voice",
                "vad"
            ]
        );
        let (_, errors) = parse(json!("fast"));
        assert_eq!(errors[0].option, "session");
        let (_, errors) = parse_update(None);
        assert_eq!(errors[0].option, "session");
        let (_, errors) = parse(json!({"tts": {"voice": "x".repeat(65)}}));
        assert!(errors[0].reason.contains("64 bytes"), "{errors:?}");
        let (_, errors) = parse(json!({"tts": {"profile": "a b"}, "asr": []}));
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn an_unknown_name_is_shown_escaped() {
        let (_, errors) = parse(json!({"tts\n{forged}": 1}));
        assert_eq!(errors[0].option, "tts\\n{forged}");
    }

    #[test]
    fn a_new_profile_starts_from_its_own_settings() {
        let s = Session::new(600, true);
        let (u, _) = parse(json!({"tts": {"voice": "v1", "speed": 1.5}}));
        let s = s.updated(&u);
        assert_eq!(s.tts.voice.as_deref(), Some("v1"));
        let (u, _) = parse(json!({"tts": {"profile": "nova"}, "listen": {"end_silence_ms": 300}}));
        let s2 = s.updated(&u);
        assert_eq!(s2.tts_profile, "nova");
        assert_eq!(s2.tts, TtsOptions::default());
        assert_eq!(s2.end_silence_ms, 300);
        assert!(s2.barge_in);
        let (u, _) = parse(json!({"tts": {"profile": "nova", "voice": "v2"}}));
        assert_eq!(s.updated(&u).tts.voice.as_deref(), Some("v2"));
        let v = s2.to_value();
        assert_eq!(v["tts"]["profile"], "nova");
        assert_eq!(v["asr"]["profile"], "default");
        assert_eq!(v["listen"]["end_silence_ms"], 300);
        assert_eq!(v["barge_in"]["enabled"], true);
        assert!(v["tts"].get("voice").is_none());
    }
}

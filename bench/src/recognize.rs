//! `voicegate-bench recognize <file.wav> --grammar <file.gram>`: runs voicegate's own
//! pocketsphinx engine over a WAV file (16-bit PCM, any rate, mono or stereo) and prints what it
//! recognized. The browser test uses it to check the audio a page received says what it should.

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use voicegate_engines::asr::AsrUpdate;
use voicegate_engines::asr::pocketsphinx::{Pocketsphinx, PocketsphinxSettings};

/// Reads a 16-bit PCM WAV: (mono samples, rate). Stereo is averaged.
fn read_wav(bytes: &[u8]) -> anyhow::Result<(Vec<i16>, u32)> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        bail!("not a WAV file");
    }
    let (mut channels, mut rate, mut bits, mut data) = (0u16, 0u32, 0u16, None);
    let mut i = 12;
    while i + 8 <= bytes.len() {
        let id = &bytes[i..i + 4];
        let len = u32::from_le_bytes(bytes[i + 4..i + 8].try_into()?) as usize;
        let body = bytes
            .get(i + 8..(i + 8 + len).min(bytes.len()))
            .context("truncated chunk")?;
        match id {
            b"fmt " if body.len() >= 16 => {
                channels = u16::from_le_bytes([body[2], body[3]]);
                rate = u32::from_le_bytes(body[4..8].try_into()?);
                bits = u16::from_le_bytes([body[14], body[15]]);
            }
            b"data" => data = Some(body),
            _ => {}
        }
        i += 8 + len + (len & 1);
    }
    let data = data.context("no data chunk")?;
    if bits != 16 || channels == 0 {
        bail!("want 16-bit PCM, got {bits}-bit with {channels} channels");
    }
    let samples: Vec<i16> = data
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mono = samples
        .chunks(channels as usize)
        .map(|c| (c.iter().map(|&s| i32::from(s)).sum::<i32>() / i32::from(channels)) as i16)
        .collect();
    Ok((mono, rate))
}

/// Runs the recognizer.
pub async fn run(wav: &str, grammar: Option<&str>) -> anyhow::Result<()> {
    let (pcm, rate) = read_wav(&std::fs::read(wav).with_context(|| format!("reading {wav}"))?)?;
    let mut at16 = Vec::new();
    let mut r =
        voicegate_core::resample::StreamResampler::new(rate, voicegate_core::frame::SPEECH_RATE)?;
    r.push(&pcm, &mut at16);
    r.finish(&mut at16);
    let grammar = grammar
        .map(std::fs::read_to_string)
        .transpose()
        .context("reading the grammar")?;
    let ps = Pocketsphinx::start(&PocketsphinxSettings {
        hmm: "/usr/share/pocketsphinx/model/en-us/en-us".into(),
        dict: "/usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict".into(),
        lm: Some("/usr/share/pocketsphinx/model/en-us/en-us.lm.bin".into()),
        grammar,
        grammars: Vec::new(),
        decoders: 1,
        // One utterance, recognized alone.
        queue_max: 1,
        unload_idle: None,
        // The audio is pushed at once: no gap to wait out.
        audio_gap_max: std::time::Duration::from_secs(3),
    })?;
    use voicegate_engines::asr::AsrFactory;
    let engine = ps.for_call();
    let (mut sink, results) = engine.utterance();
    for chunk in at16.chunks(voicegate_core::frame::SPEECH_FRAME_SAMPLES) {
        sink.push(chunk);
    }
    sink.finish();
    let updates: Vec<AsrUpdate> = results.collect().await;
    match updates.last() {
        Some(AsrUpdate::Final(Some(text), _)) => println!("{text}"),
        Some(AsrUpdate::Final(None, _)) => println!(),
        other => bail!("recognition failed: {other:?}"),
    }
    Ok(())
}

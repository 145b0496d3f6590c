//! `voicegate-bench denoise`: what `listen.denoise = "rnnoise"` does for a caller in noise, and
//! what it costs. No server: the caller's audio goes through the speech path's own parts, as a
//! dialog call runs them (`SpeechFrames`, with or without the denoiser, then the VAD and the
//! endpointer at the default `[listen]` settings), and every utterance the endpointer cuts goes
//! to pocketsphinx with the JSGF grammar.
//!
//! Per phrase (espeak-ng, en-us, 160 wpm, 16 kHz) the caller's stream is 1.5 s of noise, the
//! phrase with the noise under it, and 2 s of noise; the noise is mixed at an SNR against the
//! phrase's active speech level (`core::noise::mix_at_snr`). Three noises, all deterministic:
//! babble (four other espeak-ng voices reading other text, summed), a fan (brown noise with a
//! 100 Hz hum) and typing (key clicks). For each it reports, over all phrases, with and
//! without the denoiser:
//! - false starts: utterances that started on a noise-only stretch (the speech run that
//!   started them began more than 200 ms before the phrase or after its end);
//! - unended: phrases whose utterance was still open when the stream ended 2 s after the
//!   phrase (the detector kept hearing speech in the noise; a call would cut it only at
//!   `listen.max_utterance_ms`);
//! - exact: phrases whose utterances' recognized texts, joined, are exactly the phrase (an
//!   utterance still open at the end is recognized as it stands);
//! - the denoiser's CPU: thread CPU time inside `SpeechFrames::push` per second of audio (a
//!   share of one core per call).
//!
//! The audio is 16 kHz PCM straight from the synthesizer, not through Opus: the figures are
//! the denoiser's and the detector's, not the codec's.

use anyhow::Context as _;
use futures_util::StreamExt;
use voicegate_core::codec::Origin;
use voicegate_core::denoise::{Denoise, LATENCY_MS};
use voicegate_core::frame::{FRAME_MS, SPEECH_FRAME_SAMPLES, SPEECH_RATE, SpeechFrames};
use voicegate_core::listen::{Endpoint, EndpointSettings, Endpointer, Vad};
use voicegate_core::noise::{Rng, fan, keyboard, mix_at_snr};
use voicegate_core::resample::StreamResampler;
use voicegate_engines::asr::pocketsphinx::{Pocketsphinx, PocketsphinxSettings};
use voicegate_engines::asr::{AsrFactory, AsrUpdate};

/// The phrases the caller says: all in the test grammar (tests/fixtures/test.gram).
const PHRASES: [&str; 12] = [
    "hello world",
    "what is the weather like today",
    "please call me back tomorrow",
    "turn on the kitchen lights",
    "the quick brown fox jumps over the lazy dog",
    "stop talking please",
    "goodbye",
    "you said hello world",
    "you said turn on the kitchen lights",
    "you pressed seven",
    "you pressed hash",
    "goodbye thanks for calling",
];

/// The babble's talkers: voice, words a minute, text (none of it in the grammar).
const TALKERS: [(&str, u32, &str); 4] = [
    (
        "en-us+m3",
        170,
        "I think the meeting moved to Thursday, but nobody told the people downstairs, so half of them waited in the wrong room for an hour.",
    ),
    (
        "en-us+f3",
        155,
        "She bought a new bicycle last spring and rides it to the market every Saturday morning, unless it rains, which here is often.",
    ),
    (
        "en-us+f2",
        185,
        "The report needs another page on costs, and the numbers from the second quarter still do not add up the way finance expects.",
    ),
    (
        "en-us+m5",
        145,
        "We could drive up to the lake on Sunday, have lunch at that small place by the harbour, and be home before it gets dark.",
    ),
];

/// Noise before and after each phrase.
const LEAD_S: f64 = 1.5;
const TAIL_S: f64 = 2.0;

/// The noise kinds, in the table's order.
const NOISES: [&str; 3] = ["babble", "fan", "keyboard"];

/// SNRs, in dB.
const SNRS: [f64; 2] = [10.0, 5.0];

/// Seconds of each noise made; each phrase takes its stretch at another offset.
const NOISE_S: usize = 60;

/// What one condition gave, summed over the phrases.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    false_starts: usize,
    unended: usize,
    exact: usize,
    /// Thread CPU seconds inside `SpeechFrames::push`, and the seconds of audio pushed.
    cpu_s: f64,
    audio_s: f64,
}

/// Runs the benchmark and prints its table.
/// With `verbose`, every phrase not recognized exactly is printed with what was heard.
pub async fn run(grammar: &str, verbose: bool) -> anyhow::Result<()> {
    let grammar = std::fs::read_to_string(grammar)
        .with_context(|| format!("reading the grammar {grammar}"))?;
    let ps = Pocketsphinx::start(&PocketsphinxSettings {
        hmm: "/usr/share/pocketsphinx/model/en-us/en-us".into(),
        dict: "/usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict".into(),
        lm: None,
        grammar: Some(grammar),
        grammars: Vec::new(),
        decoders: 1,
        queue_max: 4,
        unload_idle: None,
        // The audio is pushed at once: no gap to wait out.
        audio_gap_max: std::time::Duration::from_secs(3),
    })?;
    let mut phrases = Vec::new();
    for p in PHRASES {
        phrases.push(at_speech_rate(crate::speech::espeak_pcm(p).await?)?);
    }
    let samples = NOISE_S * SPEECH_RATE as usize;
    let mut noises = vec![babble(samples).await?, fan(SPEECH_RATE, samples, 1)];
    noises.push(keyboard(SPEECH_RATE, samples, 2));
    println!(
        "{} phrases, {LEAD_S} s of noise before and {TAIL_S} s after each; the denoiser delays the speech path by {LATENCY_MS} ms",
        PHRASES.len()
    );
    println!(
        "| noise | SNR | denoise | false starts | unended | exact phrases | denoiser CPU per call |"
    );
    println!("|---|---|---|---|---|---|---|");
    for denoise in Denoise::ALL {
        let t = condition(&ps, &phrases, ("clean", None), 0.0, denoise, verbose).await?;
        print_row("none (clean)", "-", denoise, &t);
    }
    for (name, noise) in NOISES.iter().zip(&noises) {
        for snr in SNRS {
            for denoise in Denoise::ALL {
                let t =
                    condition(&ps, &phrases, (name, Some(noise)), snr, denoise, verbose).await?;
                print_row(name, &format!("{snr} dB"), denoise, &t);
            }
        }
    }
    Ok(())
}

fn print_row(noise: &str, snr: &str, denoise: Denoise, t: &Tally) {
    let cpu = match denoise {
        Denoise::Off => "-".to_owned(),
        Denoise::Rnnoise => format!(
            "{:.2} % ({:.1} ms per s of audio)",
            t.cpu_s / t.audio_s * 100.0,
            t.cpu_s / t.audio_s * 1000.0
        ),
    };
    println!(
        "| {noise} | {snr} | {} | {} | {} | {}/{} | {cpu} |",
        denoise.label(),
        t.false_starts,
        t.unended,
        t.exact,
        PHRASES.len()
    );
}

/// Every phrase with `noise` (named) under it at `snr` (or clean), through the speech path.
async fn condition(
    ps: &Pocketsphinx,
    phrases: &[Vec<i16>],
    (noise_name, noise): (&str, Option<&Vec<i16>>),
    snr: f64,
    denoise: Denoise,
    verbose: bool,
) -> anyhow::Result<Tally> {
    let mut t = Tally::default();
    let lead = (LEAD_S * f64::from(SPEECH_RATE)) as usize;
    let tail = (TAIL_S * f64::from(SPEECH_RATE)) as usize;
    for (i, (phrase, want)) in phrases.iter().zip(PHRASES).enumerate() {
        let mut clean = vec![0i16; lead];
        clean.extend_from_slice(phrase);
        clean.resize(lead + phrase.len() + tail, 0);
        let caller = match noise {
            Some(n) => {
                // Each phrase gets its own stretch of the noise.
                let start = (i * 4 * SPEECH_RATE as usize) % (n.len() - clean.len());
                mix_at_snr(&clean, &n[start..start + clean.len()], snr)
            }
            None => clean.clone(),
        };
        let heard = listen(&caller, denoise, &mut t)?;
        // Where the phrase is, in frames, as the speech path hears it (later by the
        // denoiser's latency when it runs).
        let shift = match denoise {
            Denoise::Off => 0,
            Denoise::Rnnoise => (LATENCY_MS / FRAME_MS) as usize,
        };
        let first = lead / SPEECH_FRAME_SAMPLES + shift;
        let last = (lead + phrase.len()) / SPEECH_FRAME_SAMPLES + shift;
        let mut texts = Vec::new();
        for u in &heard {
            if u.run_start + 10 < first || u.run_start > last {
                t.false_starts += 1;
            }
            if !u.ended {
                t.unended += 1;
            }
            if let Some(text) = recognize(ps, &u.audio).await? {
                texts.push(text);
            }
        }
        let got = texts.join(" ");
        if got == want {
            t.exact += 1;
        } else if verbose {
            eprintln!(
                "{noise_name} at {snr} dB, denoise {}: said {want:?}, heard {got:?} in {} utterance(s)",
                denoise.label(),
                heard.len()
            );
        }
    }
    Ok(t)
}

/// One utterance the endpointer cut.
struct Utterance {
    /// The frame where the speech run that started it began.
    run_start: usize,
    audio: Vec<i16>,
    /// It ended by silence (or its length limit) before the stream did.
    ended: bool,
}

/// The speech path's listening on `caller` (16 kHz): frames (denoised or not), the VAD, the
/// endpointer at the default settings. Counts the CPU spent making the frames.
fn listen(caller: &[i16], denoise: Denoise, t: &mut Tally) -> anyhow::Result<Vec<Utterance>> {
    let settings = EndpointSettings {
        speech_start_ms: 120,
        end_silence_ms: 600,
        // No recognizer hints here: fixed endpointing.
        end_silence_min_ms: 600,
        stable_ms: 0,
        preroll_ms: 300,
        max_utterance_ms: 15_000,
    };
    let start_frames = (settings.speech_start_ms / FRAME_MS) as usize;
    let mut frames = SpeechFrames::new(SPEECH_RATE, denoise)?;
    let mut vad = Vad::new();
    let mut endpointer = Endpointer::new(settings);
    let mut heard: Vec<Utterance> = Vec::new();
    let mut k = 0usize;
    // 20 ms pieces, as the decoder hands them to the speech path.
    for piece in caller.chunks(SPEECH_FRAME_SAMPLES) {
        let cpu0 = crate::floor::thread_cpu();
        frames.push(piece);
        t.cpu_s += crate::floor::thread_cpu() - cpu0;
        while let Some(frame) = frames.next_frame() {
            let speech = vad.is_speech(frame);
            endpointer.push(frame, speech, Origin::Decoded, &mut |ev| match ev {
                Endpoint::Start { audio } => heard.push(Utterance {
                    run_start: (k + 1).saturating_sub(start_frames),
                    audio: audio.to_vec(),
                    ended: false,
                }),
                Endpoint::Audio(a) => {
                    if let Some(u) = heard.last_mut() {
                        u.audio.extend_from_slice(a);
                    }
                }
                Endpoint::End { .. } => {
                    if let Some(u) = heard.last_mut() {
                        u.ended = true;
                    }
                }
            });
            k += 1;
        }
    }
    t.audio_s += caller.len() as f64 / f64::from(SPEECH_RATE);
    Ok(heard)
}

/// Pocketsphinx's final text for one utterance (`None`: it heard nothing it knows).
async fn recognize(ps: &Pocketsphinx, audio: &[i16]) -> anyhow::Result<Option<String>> {
    let engine = ps.for_call();
    let (mut sink, results) = engine.utterance();
    for chunk in audio.chunks(SPEECH_FRAME_SAMPLES) {
        sink.push(chunk);
    }
    sink.finish();
    let updates: Vec<AsrUpdate> = results.collect().await;
    match updates.last() {
        Some(AsrUpdate::Final(text, _)) => Ok(text.clone().filter(|t| !t.is_empty())),
        other => anyhow::bail!("recognition failed: {other:?}"),
    }
}

/// Synthesizer audio at the speech rate.
fn at_speech_rate((pcm, rate): (Vec<i16>, u32)) -> anyhow::Result<Vec<i16>> {
    let mut r = StreamResampler::new(rate, SPEECH_RATE)?;
    let mut out = Vec::new();
    r.push(&pcm, &mut out);
    r.finish(&mut out);
    Ok(out)
}

/// Babble: the [`TALKERS`] each reading their text over and over from their own starting
/// point, summed, `samples` long at the speech rate.
async fn babble(samples: usize) -> anyhow::Result<Vec<i16>> {
    let mut sum = vec![0i32; samples];
    let mut rng = Rng::new(5);
    for (voice, wpm, text) in TALKERS {
        let talker = at_speech_rate(crate::speech::espeak_voice_pcm(voice, wpm, text).await?)?;
        anyhow::ensure!(!talker.is_empty(), "espeak-ng said nothing for {voice}");
        let offset = (rng.next_f64() * talker.len() as f64) as usize;
        for (i, s) in sum.iter_mut().enumerate() {
            *s += i32::from(talker[(offset + i) % talker.len()]);
        }
    }
    Ok(sum
        .into_iter()
        .map(|s| s.clamp(-32768, 32767) as i16)
        .collect())
}

//! The engine's tests: the queue and decoder threads with the real pocketsphinx models, and the
//! decode loop driven by a decoder that fails on cue.

use super::*;
use futures_util::StreamExt;

fn settings(grammar: Option<&str>) -> PocketsphinxSettings {
    PocketsphinxSettings {
        hmm: "/usr/share/pocketsphinx/model/en-us/en-us".into(),
        dict: "/usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict".into(),
        lm: Some("/usr/share/pocketsphinx/model/en-us/en-us.lm.bin".into()),
        grammar: grammar.map(str::to_owned),
        grammars: Vec::new(),
        decoders: 1,
        queue_max: 8,
        unload_idle: None,
        audio_gap_max: Duration::from_secs(3),
    }
}

#[actix_rt::test]
async fn silence_gives_no_final_and_a_bad_grammar_is_a_startup_error() {
    let ps = Pocketsphinx::start(&settings(Some(
        "#JSGF V1.0; grammar g; public <s> = hello world ;",
    )))
    .expect("pocketsphinx is installed by scripts/setup.sh");
    let engine = ps.for_call();
    let (mut sink, results) = engine.utterance();
    sink.push(&[0; 16_000]);
    sink.finish();
    let updates: Vec<AsrUpdate> = results.collect().await;
    assert!(
        matches!(updates.last(), Some(AsrUpdate::Final(None, _))),
        "{updates:?}"
    );

    let bad = Pocketsphinx::start(&settings(Some(
        "#JSGF V1.0; grammar g; public <s> = xyzzyplugh ;",
    )))
    .err();
    assert!(
        matches!(&bad, Some(StartError::Decoder(DecoderError::GrammarWord(w))) if w == "xyzzyplugh"),
        "{bad:?}"
    );
    assert!(bad.is_some_and(|e| e.to_string().contains("dictionary")));
    // Words are matched as the decoder matches them: case-sensitively.
    let upper = Pocketsphinx::start(&settings(Some(
        "#JSGF V1.0; grammar g; public <s> = HELLO world ;",
    )))
    .err();
    assert!(
        matches!(&upper, Some(StartError::Decoder(DecoderError::GrammarWord(w))) if w == "HELLO"),
        "{upper:?}"
    );
    let unparsable =
        Pocketsphinx::start(&settings(Some("#JSGF V1.0; grammar g; public <s> = ("))).err();
    assert!(
        matches!(
            unparsable,
            Some(StartError::Decoder(DecoderError::GrammarParse))
        ),
        "{unparsable:?}"
    );
    let bad_named = Pocketsphinx::start(&PocketsphinxSettings {
        grammars: vec![(
            "menu".into(),
            "#JSGF V1.0; grammar m; public <m> = one | zorkmid ;".into(),
        )],
        ..settings(None)
    })
    .err();
    assert!(
        matches!(&bad_named, Some(StartError::Decoder(DecoderError::GrammarWord(w))) if w == "zorkmid"),
        "{bad_named:?}"
    );
    let no_lm = Pocketsphinx::start(&PocketsphinxSettings {
        lm: Some("/nonexistent.lm.bin".into()),
        ..settings(None)
    })
    .err();
    assert!(
        matches!(no_lm, Some(StartError::Decoder(DecoderError::NoLm(_)))),
        "{no_lm:?}"
    );
    let missing = Pocketsphinx::start(&PocketsphinxSettings {
        hmm: "/nonexistent".into(),
        ..settings(None)
    })
    .err();
    assert!(
        matches!(&missing, Some(StartError::Decoder(DecoderError::NoMdef(p))) if p.as_os_str() == "/nonexistent"),
        "{missing:?}"
    );
    assert!(missing.is_some_and(|e| e.to_string().contains("mdef")));
}

/// Waits until `n` decoders are built or being built.
async fn decoders(ps: &Pocketsphinx, n: usize) {
    let t0 = std::time::Instant::now();
    while ps.decoders() != n {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "{} decoders, want {n}",
            ps.decoders()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn models_load_on_first_need_and_the_pool_grows_only_when_utterances_overlap() {
    let ps = Pocketsphinx::start(&PocketsphinxSettings {
        decoders: 2,
        ..settings(Some(
            "#JSGF V1.0; grammar c; public <c> = red | green | blue ;",
        ))
    })
    .expect("pocketsphinx is installed by scripts/setup.sh");
    let green = spoken("green").await;
    // Started, checked, nothing loaded.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(ps.decoders(), 0);
    // A call that may need recognition: one decoder is built in the background, and the
    // first utterance, sent at once, waits for it and is recognized.
    let engine = ps.for_call();
    decoders(&ps, 1).await;
    assert_eq!(recognize(&engine, &green).await.as_deref(), Some("green"));
    // More calls, one utterance at a time: still the one decoder.
    for _ in 0..3 {
        let other = ps.for_call();
        assert_eq!(recognize(&other, &green).await.as_deref(), Some("green"));
    }
    assert_eq!(ps.decoders(), 1);
    // Two utterances at once: the second thread builds its decoder.
    let (mut a, a_results) = engine.utterance();
    a.push(&[0; 1600]);
    let other = ps.for_call();
    let (mut b, b_results) = other.utterance();
    decoders(&ps, 2).await;
    for sink in [&mut a, &mut b] {
        sink.push(&green);
    }
    a.finish();
    b.finish();
    for results in [a_results, b_results] {
        let updates: Vec<AsrUpdate> = results.collect().await;
        assert!(
            matches!(updates.last(), Some(AsrUpdate::Final(Some(t), _)) if t == "green"),
            "{updates:?}"
        );
    }
}

#[actix_rt::test]
async fn an_idle_decoder_is_unloaded_and_the_next_call_loads_one_again() {
    let idle = std::time::Duration::from_millis(400);
    let ps = Pocketsphinx::start(&PocketsphinxSettings {
        unload_idle: Some(idle),
        ..settings(Some(
            "#JSGF V1.0; grammar c; public <c> = red | green | blue ;",
        ))
    })
    .expect("pocketsphinx is installed by scripts/setup.sh");
    let green = spoken("green").await;
    let engine = ps.for_call();
    decoders(&ps, 1).await;
    assert_eq!(recognize(&engine, &green).await.as_deref(), Some("green"));
    // An utterance that lasts longer than the idle time keeps its decoder: audio comes in
    // pieces over 0.8 s, and the decoder is still there for the result.
    let (mut sink, results) = engine.utterance();
    for piece in green.chunks(green.len() / 8 + 1) {
        sink.push(piece);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(ps.decoders(), 1, "busy, not idle");
    }
    // The decoder's last work comes after this instant (ending the utterance).
    let done = std::time::Instant::now();
    sink.finish();
    let updates: Vec<AsrUpdate> = results.collect().await;
    assert!(
        matches!(updates.last(), Some(AsrUpdate::Final(Some(t), _)) if t == "green"),
        "{updates:?}"
    );
    // Then nothing to do: unloaded once the idle time has passed, not before.
    decoders(&ps, 0).await;
    assert!(
        done.elapsed() >= idle,
        "unloaded after {:?}",
        done.elapsed()
    );
    // The next call has one built in the background, and is recognized.
    let next = ps.for_call();
    decoders(&ps, 1).await;
    assert_eq!(recognize(&next, &green).await.as_deref(), Some("green"));
    // An engine that keeps its decoders does not unload them.
    let kept = Pocketsphinx::start(&settings(Some(
        "#JSGF V1.0; grammar c; public <c> = red | green | blue ;",
    )))
    .expect("started");
    let engine = kept.for_call();
    assert_eq!(recognize(&engine, &green).await.as_deref(), Some("green"));
    tokio::time::sleep(2 * idle).await;
    assert_eq!(kept.decoders(), 1);
}

const COLORS: &str = "#JSGF V1.0; grammar c; public <c> = red | green | blue ;";

#[actix_rt::test]
async fn a_caller_whose_audio_stops_mid_utterance_holds_the_decoder_only_briefly() {
    // One decoder, as the tests' servers have, freed after a configured second (3 s by
    // default) without audio.
    let ps = Pocketsphinx::start(&PocketsphinxSettings {
        audio_gap_max: Duration::from_secs(1),
        ..settings(Some(COLORS))
    })
    .expect("pocketsphinx is installed by scripts/setup.sh");
    let green = spoken("green").await;
    let a = ps.for_call();
    decoders(&ps, 1).await;
    // A caller starts an utterance, then their network drops: no more audio, and no end
    // (the endpointer hears nothing either). Their call is still up: the sink lives.
    let (mut a_sink, a_results) = a.utterance();
    a_sink.push(&green[..green.len() / 2]);
    waiting(&ps, 0).await;
    // Another call's utterance waits for the one decoder, and is recognized once the
    // configured gap freed it, well within the recognizer's deadline
    // (`asr.utterance_deadline_ms`, 15 s by default).
    let b = ps.for_call();
    let t0 = std::time::Instant::now();
    let heard = tokio::time::timeout(Duration::from_secs(6), recognize(&b, &green))
        .await
        .expect("the other call is recognized while the first caller's call is still up");
    assert_eq!(heard.as_deref(), Some("green"));
    let took = t0.elapsed();
    println!("recognized after {took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // The first caller's utterance gets one result, its failure, which says why.
    let a_updates: Vec<AsrUpdate> =
        tokio::time::timeout(std::time::Duration::from_secs(5), a_results.collect())
            .await
            .expect("the first utterance's results end");
    let ends: Vec<&AsrUpdate> = a_updates
        .iter()
        .filter(|u| !matches!(u, AsrUpdate::Partial(..)))
        .collect();
    let [AsrUpdate::Error(e)] = ends.as_slice() else {
        panic!("one failure: {a_updates:?}");
    };
    assert!(!e.is_fatal(), "{e:?}");
    assert_eq!(e.limit(), Some(super::super::AsrLimit::AudioGap));
    assert_eq!(
        e.to_string(),
        "pocketsphinx: no audio for 1000 ms mid-utterance (the caller's audio stopped)"
    );
    drop(a_sink);
}

/// A decoder that hears "hello" once it has had audio, and fails on its `fail_at`-th chunk
/// (from 1; 0: never).
#[derive(Default)]
struct Stub {
    fail_at: usize,
    chunks: usize,
    in_utt: bool,
}

impl Decodes for Stub {
    fn use_search(&mut self, _: Option<&str>) -> Result<(), DecoderError> {
        Ok(())
    }
    fn reset_cmn(&mut self) -> Result<(), DecoderError> {
        Ok(())
    }
    fn start(&mut self) -> Result<(), DecoderError> {
        self.in_utt = true;
        Ok(())
    }
    fn process(&mut self, _: &[i16]) -> Result<(), DecoderError> {
        self.chunks += 1;
        if self.chunks == self.fail_at {
            return Err(DecoderError::ProcessRaw(-1));
        }
        Ok(())
    }
    fn partial(&mut self) -> Option<String> {
        (self.chunks > 0).then(|| "hello".to_owned())
    }
    fn finish(&mut self) -> Result<Option<String>, DecoderError> {
        self.in_utt = false;
        Ok(self.partial())
    }
    fn grammar_active(&self) -> bool {
        false
    }
    fn segments(&mut self) -> Vec<Segment> {
        Vec::new()
    }
}

/// What a decoder thread reports for `audio` decoded by `d`: what [`decode`] sent on the
/// way, then what it returned (which [`run`] sends).
fn reported<D: Decodes>(d: &mut D, audio: Vec<Audio>) -> Vec<Decoded> {
    let (tx, rx) = std_mpsc::channel();
    let (results, mut reports) = mpsc::unbounded_channel();
    let job = Job {
        audio: rx,
        results,
        grammar: None,
    };
    for a in audio {
        tx.send(a).expect("the job holds the receiver");
    }
    let last = decode(d, None, &job, Duration::from_secs(3));
    let mut out = Vec::new();
    while let Ok(r) = reports.try_recv() {
        out.push(r);
    }
    out.extend(last);
    out
}

#[test]
fn a_decoder_failure_mid_utterance_is_its_only_result_and_ends_the_utterance() {
    // `ps_process_raw` cannot be made to fail on demand: a stand-in decoder fails instead.
    let chunks = || vec![Audio::Chunk(vec![0; 1600]), Audio::Chunk(vec![0; 1600])];
    let mut fails = Stub {
        fail_at: 2,
        ..Stub::default()
    };
    let mut audio = chunks();
    audio.push(Audio::End);
    let r = reported(&mut fails, audio);
    assert!(
        matches!(
            r.as_slice(),
            [Decoded::Failed(DecoderError::ProcessRaw(-1))]
        ),
        "{r:?}"
    );
    assert!(
        !fails.in_utt,
        "the utterance ended: the decoder can start the next one"
    );
    // Without the failure: a partial, then the final.
    let mut works = Stub::default();
    let mut audio = chunks();
    audio.push(Audio::End);
    let r = reported(&mut works, audio);
    assert!(
        matches!(r.as_slice(), [Decoded::Partial(p, None), Decoded::Final(Some(f), None)] if p == "hello" && f == "hello"),
        "{r:?}"
    );
    assert!(!works.in_utt);
}

/// Waits until `n` utterances wait in the queue.
async fn waiting(ps: &Pocketsphinx, n: usize) {
    let t0 = std::time::Instant::now();
    while ps.shared.lock().jobs.len() != n {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{} waiting, want {n}",
            ps.shared.lock().jobs.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The first update of `results`, which must come at once.
async fn first(results: &mut AsrStream) -> AsrUpdate {
    tokio::time::timeout(std::time::Duration::from_secs(5), results.next())
        .await
        .expect("an update in time")
        .expect("an update")
}

#[actix_rt::test]
async fn the_queue_is_bounded_shared_fairly_and_abandoned_work_frees_the_decoder() {
    let ps = Pocketsphinx::start(&PocketsphinxSettings {
        queue_max: 2,
        ..settings(Some("#JSGF V1.0; grammar g; public <s> = hello world ;"))
    })
    .expect("pocketsphinx is installed by scripts/setup.sh");
    let (a, b, c, d) = (ps.for_call(), ps.for_call(), ps.for_call(), ps.for_call());
    // A caller talks and holds the one decoder.
    let (mut a_sink, a_results) = a.utterance();
    a_sink.push(&[0; 1600]);
    waiting(&ps, 0).await;
    // Another call's utterance waits; its next one is refused: a call holds half the queue.
    let (mut b1_sink, mut b1_results) = b.utterance();
    waiting(&ps, 1).await;
    let (_b2_sink, mut b2_results) = b.utterance();
    let AsrUpdate::Error(e) = first(&mut b2_results).await else {
        panic!("b2 is refused");
    };
    assert!(e.refused() && !e.is_fatal(), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("pocketsphinx: recognition refused: this call already has 1"),
        "{e}"
    );
    // A third call takes the last place; a fourth finds the queue full.
    let (_c_sink, c_results) = c.utterance();
    waiting(&ps, 2).await;
    let (_d1_sink, mut d1_results) = d.utterance();
    let AsrUpdate::Error(e) = first(&mut d1_results).await else {
        panic!("d1 is refused");
    };
    assert!(e.refused(), "{e:?}");
    assert!(e.to_string().contains("server is busy"), "{e}");
    // The third call hangs up: its place is free again.
    drop(c_results);
    let (mut d2_sink, mut d2_results) = d.utterance();
    waiting(&ps, 2).await;
    // Nobody awaits the first utterance any more (a deadline passed): the decoder drops it
    // at its next audio, without its end, and serves the waiting calls in turn.
    drop(a_results);
    a_sink.push(&[0; 1600]);
    b1_sink.push(&[0; 16_000]);
    b1_sink.finish();
    let b1 = first(&mut b1_results).await;
    assert!(matches!(b1, AsrUpdate::Final(None, _)), "{b1:?}");
    d2_sink.push(&[0; 16_000]);
    d2_sink.finish();
    let d2 = first(&mut d2_results).await;
    assert!(matches!(d2, AsrUpdate::Final(None, _)), "{d2:?}");
    waiting(&ps, 0).await;
}

/// `text` spoken by espeak-ng at 16 kHz, with silence around it.
async fn spoken(text: &str) -> Vec<i16> {
    use crate::tts::TtsFactory;
    use crate::tts::espeak::{Espeak, EspeakSettings};
    let espeak = Espeak::start(&EspeakSettings {
        voice: "en-us".into(),
        rate_wpm: 150,
    })
    .expect("espeak-ng is installed by scripts/setup.sh");
    let engine = espeak.for_call();
    let rate = engine.sample_rate();
    let pcm: Vec<i16> = engine
        .synthesize(text)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    let mut r = voicegate_core::resample::StreamResampler::new(rate, 16_000).unwrap();
    let mut out = vec![0; 4800];
    r.push(&pcm, &mut out);
    r.finish(&mut out);
    out.extend([0; 4800]);
    out
}

async fn recognize(engine: &Rc<dyn AsrEngine>, pcm: &[i16]) -> Option<String> {
    let (mut sink, results) = engine.utterance();
    sink.push(pcm);
    sink.finish();
    let updates: Vec<AsrUpdate> = results.collect().await;
    match updates.into_iter().last() {
        Some(AsrUpdate::Final(text, _)) => text,
        other => panic!("no final: {other:?}"),
    }
}

#[actix_rt::test]
async fn a_session_chooses_a_named_grammar_per_utterance_and_goes_back_to_the_default() {
    let ps = Pocketsphinx::start(&PocketsphinxSettings {
        grammars: vec![
            (
                "colors".into(),
                "#JSGF V1.0; grammar c; public <c> = red | green | blue ;".into(),
            ),
            (
                "numbers".into(),
                "#JSGF V1.0; grammar n; public <n> = one | two | three ;".into(),
            ),
        ],
        ..settings(None)
    })
    .expect("pocketsphinx is installed by scripts/setup.sh");
    let green = spoken("green").await;
    let colors = ps
        .with_options(&AsrOptions {
            grammar: Some("colors".into()),
            ..Default::default()
        })
        .unwrap();
    let numbers = ps
        .with_options(&AsrOptions {
            grammar: Some("numbers".into()),
            ..Default::default()
        })
        .unwrap();
    // One decoder serves them all, switching searches per utterance.
    assert_eq!(recognize(&colors, &green).await.as_deref(), Some("green"));
    let n = recognize(&numbers, &green).await;
    assert!(
        matches!(n.as_deref(), None | Some("one" | "two" | "three")),
        "{n:?}"
    );
    let lm = recognize(&ps.for_call(), &green).await;
    assert!(lm.is_some(), "the language model hears something");
    assert_eq!(recognize(&colors, &green).await.as_deref(), Some("green"));

    let refused = |o: AsrOptions| ps.with_options(&o).err().map(|e| e.option);
    assert_eq!(
        refused(AsrOptions {
            grammar: Some("nope".into()),
            ..Default::default()
        }),
        Some("grammar")
    );
    assert_eq!(
        refused(AsrOptions {
            language: Some("de".into()),
            ..Default::default()
        }),
        Some("language")
    );
    assert_eq!(
        refused(AsrOptions {
            grammar: Some(String::new()),
            ..Default::default()
        }),
        None
    );
}

#[test]
fn confidence_compares_words_and_silences_with_free_phones_over_the_same_frames() {
    let seg = |start, end, ascr, filler| Segment {
        start,
        end,
        ascr,
        filler,
    };
    let phones = [
        seg(0, 9, -1000, true),
        seg(10, 29, -200, false),
        seg(30, 49, -300, false),
        seg(50, 59, -900, true),
    ];
    // Words and silences as good as free phones over their frames, or better (the loop is
    // pruned): 1.
    let fits = [
        seg(0, 9, -100, true),
        seg(10, 49, -500, false),
        seg(50, 59, -100, true),
    ];
    assert_eq!(confidence(&fits, &phones), Some(1.0));
    // Words worse by 5 units a frame: exp(-5 * SCORE_NATS), about 0.6. A phone straddling
    // the word's edge counts for its frames inside (frames 20-39 get half of each); the
    // silences fitting better make up for nothing.
    let worse = [
        seg(0, 19, -200, true),
        seg(20, 39, -250 - 100, false),
        seg(40, 59, -500, true),
    ];
    let c = confidence(&worse, &phones).unwrap();
    assert!(
        (f64::from(c) - (-5.0 * SCORE_NATS).exp()).abs() < 1e-6,
        "{c}"
    );
    assert!((0.59..0.61).contains(&c), "{c}");
    // Words that fit, but the sound before them taken as silence fits badly (100 units
    // worse, over 20 word frames): just as unsure.
    let hidden = [
        seg(0, 19, -1100 - 100, true),
        seg(20, 39, -250, false),
        seg(40, 59, -1050, true),
    ];
    assert_eq!(confidence(&hidden, &phones), Some(c));
    // No word: no confidence.
    assert_eq!(confidence(&[seg(0, 59, -10, true)], &phones), None);
    assert_eq!(confidence(&[], &phones), None);
}

/// The final and partial results of `pcm`.
async fn results(engine: &Rc<dyn AsrEngine>, pcm: &[i16]) -> Vec<AsrUpdate> {
    let (mut sink, results) = engine.utterance();
    for chunk in pcm.chunks(1600) {
        sink.push(chunk);
    }
    sink.finish();
    results.collect().await
}

#[actix_rt::test]
async fn grammar_results_say_how_well_the_words_fit_the_audio() {
    let ps = Pocketsphinx::start(&settings(Some(
        "#JSGF V1.0; grammar g; public <s> = stop | wait a second ;",
    )))
    .expect("pocketsphinx is installed by scripts/setup.sh");
    let engine = ps.for_call();
    // Words the grammar lists fit it as well as free phones.
    let updates = results(&engine, &spoken("wait a second").await).await;
    let Some(AsrUpdate::Final(Some(text), Some(c))) = updates.last() else {
        panic!("{updates:?}");
    };
    assert_eq!(text, "wait a second");
    assert!(*c > 0.9, "{updates:?}");
    assert!(
        updates
            .iter()
            .all(|u| matches!(u, AsrUpdate::Partial(_, Some(_)) | AsrUpdate::Final(..))),
        "{updates:?}"
    );
    // Words it does not list are forced onto a phrase, which fits them badly.
    let updates = results(&engine, &spoken("please call me back tomorrow").await).await;
    match updates.last() {
        Some(AsrUpdate::Final(Some(_), Some(c))) => assert!(*c < 0.5, "{updates:?}"),
        Some(AsrUpdate::Final(None, None)) => {}
        _ => panic!("{updates:?}"),
    }
    // The language model's results have none.
    let lm = Pocketsphinx::start(&settings(None)).unwrap();
    let updates = results(&lm.for_call(), &spoken("stop").await).await;
    assert!(
        matches!(updates.last(), Some(AsrUpdate::Final(Some(_), None))),
        "{updates:?}"
    );
}

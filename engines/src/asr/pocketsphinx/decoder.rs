//! A safe wrapper around Debian's pocketsphinx 0.8 (`0.8+5prealpha`) C API: one decoder is one
//! `ps_decoder_t` plus the `cmd_ln_t` it was built from. See the notes on each item for the
//! library's pitfalls (API version, a grammar leak worked around, cepstral mean carry-over).

use std::ffi::{CStr, CString};
use std::marker::{PhantomData, PhantomPinned};
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// Why a decoder could not be built or an utterance failed. The C library reports failures as
/// a negative return or a NULL without detail, so each variant names the step that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecoderError {
    /// Neither a language model nor a grammar was given.
    #[error("need a language model or a JSGF grammar")]
    NoSearch,
    /// The acoustic model directory has no `mdef` file.
    #[error("acoustic model dir has no mdef: {}", .0.display())]
    NoMdef(PathBuf),
    /// The dictionary file does not exist.
    #[error("dictionary not found: {}", .0.display())]
    NoDict(PathBuf),
    /// The language model file does not exist.
    #[error("language model not found: {}", .0.display())]
    NoLm(PathBuf),
    /// A path cannot be a C string.
    #[error("{what} path contains a NUL byte: {}", .path.display())]
    PathNul {
        /// Which setting.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The grammar text cannot be a C string.
    #[error("grammar contains a NUL byte")]
    GrammarNul,
    /// A C call failed (returned NULL or a negative code) without saying why.
    #[error("{0} failed")]
    Failed(&'static str),
    /// `ps_init` refused the configuration.
    #[error("ps_init failed (bad model/dictionary/LM?)")]
    Init,
    /// The JSGF grammar does not parse.
    #[error("JSGF grammar failed to parse")]
    GrammarParse,
    /// The JSGF grammar has no public rule to recognize.
    #[error("JSGF grammar has no public rule")]
    GrammarNoPublicRule,
    /// No finite-state grammar could be built from the JSGF grammar.
    #[error("could not build FSG from JSGF grammar")]
    GrammarFsg,
    /// The decoder refused the grammar, usually for a word its dictionary lacks.
    #[error("grammar rejected by the decoder (word not in the dictionary?)")]
    GrammarRejected,
    /// A word of the grammar is in neither the dictionary nor the acoustic model's noise
    /// dictionary (words are matched case-sensitively, as the decoder does).
    #[error("grammar word {0:?} is not in the dictionary")]
    GrammarWord(String),
    /// The dictionary could not be read while checking a grammar's words.
    #[error("cannot read the dictionary {}: {reason}", .path.display())]
    DictRead {
        /// The file.
        path: PathBuf,
        /// Why (the I/O error's text).
        reason: String,
    },
    /// `ps_process_raw` failed with this code.
    #[error("ps_process_raw failed ({0})")]
    ProcessRaw(c_int),
    /// A method was called in the wrong utterance state (a bug of the caller).
    #[error("{0}")]
    Misuse(&'static str),
    /// The decoder has no feature extractor to reset.
    #[error("decoder has no feature extractor")]
    NoFeat,
    /// The model disables cepstral mean normalisation.
    #[error("CMN disabled (-cmn none)")]
    CmnDisabled,
    /// The library's `cmn_t` does not look like the mirrored layout.
    #[error("unexpected cmn_t layout (veclen {0})")]
    CmnLayout(i32),
}

/// Raw declarations. Kept private; everything public goes through `Decoder`.
#[allow(non_camel_case_types)]
mod ffi {
    use super::*;

    /// Opaque `ps_decoder_t`.
    #[repr(C)]
    pub struct ps_decoder_t {
        _data: [u8; 0],
        _marker: PhantomData<(*mut u8, PhantomPinned)>,
    }
    /// Opaque `cmd_ln_t`.
    #[repr(C)]
    pub struct cmd_ln_t {
        _data: [u8; 0],
        _marker: PhantomData<(*mut u8, PhantomPinned)>,
    }
    /// Opaque `arg_t` (we only ever pass the pointer returned by `ps_args()`).
    #[repr(C)]
    pub struct arg_t {
        _data: [u8; 0],
        _marker: PhantomData<(*mut u8, PhantomPinned)>,
    }
    /// Opaque `jsgf_t`, `jsgf_rule_t`, `fsg_model_t`, `logmath_t`.
    #[repr(C)]
    pub struct jsgf_t {
        _data: [u8; 0],
        _marker: PhantomData<(*mut u8, PhantomPinned)>,
    }
    #[repr(C)]
    pub struct jsgf_rule_t {
        _data: [u8; 0],
        _marker: PhantomData<(*mut u8, PhantomPinned)>,
    }
    #[repr(C)]
    pub struct fsg_model_t {
        _data: [u8; 0],
        _marker: PhantomData<(*mut u8, PhantomPinned)>,
    }
    #[repr(C)]
    pub struct ps_seg_t {
        _data: [u8; 0],
        _marker: PhantomData<(*mut u8, PhantomPinned)>,
    }
    #[repr(C)]
    pub struct logmath_t {
        _data: [u8; 0],
        _marker: PhantomData<(*mut u8, PhantomPinned)>,
    }
    /// Leading part of `struct fsg_model_s` (public in sphinxbase/fsg_model.h) up to its
    /// vocabulary. Only read.
    #[repr(C)]
    pub struct fsg_model_prefix {
        pub refcount: c_int,
        pub name: *mut c_char,
        pub n_word: i32,
        pub n_word_alloc: i32,
        pub vocab: *mut *mut c_char,
    }
    #[cfg(target_pointer_width = "64")]
    const _: () = {
        assert!(std::mem::offset_of!(fsg_model_prefix, n_word) == 16);
        assert!(std::mem::offset_of!(fsg_model_prefix, vocab) == 24);
    };

    /// Leading part of `struct feat_s` (`feat_t`, public in sphinxbase/feat.h)
    /// up to and including `cmn_struct`. Only read, never written or moved.
    /// Offsets checked against the C compiler (offsetof): cepsize=16,
    /// cmn=68, cmn_struct=88 on x86_64 — see the const asserts below.
    #[repr(C)]
    pub struct feat_t_prefix {
        pub refcount: c_int,
        pub name: *mut c_char,
        pub cepsize: i32,
        pub n_stream: i32,
        pub stream_len: *mut u32,
        pub window_size: i32,
        pub n_sv: i32,
        pub sv_len: *mut u32,
        pub subvecs: *mut *mut i32,
        pub sv_buf: *mut f32,
        pub sv_dim: i32,
        pub cmn: c_int, // cmn_type_t (enum)
        pub varnorm: i32,
        pub agc: c_int, // agc_type_t (enum)
        pub compute_feat: Option<unsafe extern "C" fn()>,
        pub cmn_struct: *mut cmn_t,
    }
    /// `cmn_t` (public in sphinxbase/cmn.h). `mfcc_t` is `float32` because
    /// Debian's sphinxbase is built without FIXED_POINT (sphinx_config.h).
    #[repr(C)]
    pub struct cmn_t {
        pub cmn_mean: *mut f32,
        pub cmn_var: *mut f32,
        pub sum: *mut f32,
        pub nframe: i32,
        pub veclen: i32,
    }
    #[cfg(target_pointer_width = "64")]
    const _: () = {
        assert!(std::mem::offset_of!(feat_t_prefix, cepsize) == 16);
        assert!(std::mem::offset_of!(feat_t_prefix, cmn) == 68);
        assert!(std::mem::offset_of!(feat_t_prefix, cmn_struct) == 88);
        assert!(std::mem::offset_of!(cmn_t, veclen) == 28);
    };

    #[link(name = "pocketsphinx")]
    unsafe extern "C" {
        // feat_t *ps_get_feat(ps_decoder_t *ps);
        pub fn ps_get_feat(ps: *mut ps_decoder_t) -> *mut feat_t_prefix;
        // arg_t const *ps_args(void);
        pub fn ps_args() -> *const arg_t;
        // ps_decoder_t *ps_init(cmd_ln_t *config);   (retains config)
        pub fn ps_init(config: *mut cmd_ln_t) -> *mut ps_decoder_t;
        // int ps_free(ps_decoder_t *ps);
        pub fn ps_free(ps: *mut ps_decoder_t) -> c_int;
        // int ps_start_utt(ps_decoder_t *ps);
        pub fn ps_start_utt(ps: *mut ps_decoder_t) -> c_int;
        // int ps_process_raw(ps_decoder_t *ps, int16 const *data, size_t n_samples,
        //                    int no_search, int full_utt);
        pub fn ps_process_raw(
            ps: *mut ps_decoder_t,
            data: *const i16,
            n_samples: usize,
            no_search: c_int,
            full_utt: c_int,
        ) -> c_int;
        // int ps_end_utt(ps_decoder_t *ps);
        pub fn ps_end_utt(ps: *mut ps_decoder_t) -> c_int;
        // char const *ps_get_hyp(ps_decoder_t *ps, int32 *out_best_score);
        pub fn ps_get_hyp(ps: *mut ps_decoder_t, out_best_score: *mut i32) -> *const c_char;
        // NOT USED: int ps_set_jsgf_string(ps_decoder_t *ps, const char *name,
        //                                  const char *jsgf_string);
        // In 0.8+5prealpha it never calls jsgf_grammar_free() -> leaks ~9 kB
        // (valgrind: "definitely lost ... jsgf_grammar_new <- jsgf_parse_string
        // <- ps_set_jsgf_string") per call. We do the same steps ourselves
        // (see Decoder::set_jsgf), as upstream's later fixed version does.
        //
        // int ps_set_fsg(ps_decoder_t *ps, const char *name, fsg_model_t *fsg);
        // (the decoder takes its own reference to fsg)
        pub fn ps_set_fsg(
            ps: *mut ps_decoder_t,
            name: *const c_char,
            fsg: *mut fsg_model_t,
        ) -> c_int;
        // logmath_t *ps_get_logmath(ps_decoder_t *ps);   (borrowed)
        pub fn ps_get_logmath(ps: *mut ps_decoder_t) -> *mut logmath_t;
        // int ps_set_search(ps_decoder_t *ps, const char *name);
        pub fn ps_set_search(ps: *mut ps_decoder_t, name: *const c_char) -> c_int;
        // int ps_set_allphone(ps_decoder_t *ps, const char *name, ngram_model_t *lm);
        // (lm NULL: every phone may follow every other, no phonetic language model)
        pub fn ps_set_allphone(
            ps: *mut ps_decoder_t,
            name: *const c_char,
            lm: *mut c_void,
        ) -> c_int;
        // ps_seg_t *ps_seg_iter(ps_decoder_t *ps);   (NULL if no hypothesis)
        pub fn ps_seg_iter(ps: *mut ps_decoder_t) -> *mut ps_seg_t;
        // ps_seg_t *ps_seg_next(ps_seg_t *seg);   (frees seg and returns NULL at the end)
        pub fn ps_seg_next(seg: *mut ps_seg_t) -> *mut ps_seg_t;
        // char const *ps_seg_word(ps_seg_t *seg);   (valid until ps_seg_next)
        pub fn ps_seg_word(seg: *mut ps_seg_t) -> *const c_char;
        // void ps_seg_frames(ps_seg_t *seg, int *out_sf, int *out_ef);
        pub fn ps_seg_frames(seg: *mut ps_seg_t, out_sf: *mut c_int, out_ef: *mut c_int);
        // int32 ps_seg_prob(ps_seg_t *seg, int32 *out_ascr, int32 *out_lscr, int32 *out_lback);
        pub fn ps_seg_prob(
            seg: *mut ps_seg_t,
            out_ascr: *mut i32,
            out_lscr: *mut i32,
            out_lback: *mut i32,
        ) -> i32;
    }

    #[link(name = "sphinxbase")]
    unsafe extern "C" {
        // cmd_ln_t *cmd_ln_parse_r(cmd_ln_t *inout_cmdln, arg_t const *defn,
        //                          int32 argc, char *argv[], int32 strict);
        pub fn cmd_ln_parse_r(
            inout_cmdln: *mut cmd_ln_t,
            defn: *const arg_t,
            argc: i32,
            argv: *mut *mut c_char,
            strict: i32,
        ) -> *mut cmd_ln_t;
        // int cmd_ln_free_r(cmd_ln_t *cmdln);   (returns new refcount)
        pub fn cmd_ln_free_r(cmdln: *mut cmd_ln_t) -> c_int;
        // void err_set_logfp(FILE *stream);     (NULL disables logging, process-wide)
        pub fn err_set_logfp(stream: *mut c_void);
        // double cmd_ln_float_r(cmd_ln_t *cmdln, char const *name);
        pub fn cmd_ln_float_r(cmdln: *mut cmd_ln_t, name: *const c_char) -> f64;
        // jsgf_t *jsgf_parse_string(const char *string, jsgf_t *parent);
        pub fn jsgf_parse_string(string: *const c_char, parent: *mut jsgf_t) -> *mut jsgf_t;
        // jsgf_rule_t *jsgf_get_public_rule(jsgf_t *grammar);   (borrowed)
        pub fn jsgf_get_public_rule(grammar: *mut jsgf_t) -> *mut jsgf_rule_t;
        // fsg_model_t *jsgf_build_fsg(jsgf_t *grammar, jsgf_rule_t *rule,
        //                             logmath_t *lmath, float32 lw);
        pub fn jsgf_build_fsg(
            grammar: *mut jsgf_t,
            rule: *mut jsgf_rule_t,
            lmath: *mut logmath_t,
            lw: f32,
        ) -> *mut fsg_model_t;
        // void jsgf_grammar_free(jsgf_t *jsgf);
        pub fn jsgf_grammar_free(jsgf: *mut jsgf_t);
        // int fsg_model_free(fsg_model_t *fsg);   (refcounted)
        pub fn fsg_model_free(fsg: *mut fsg_model_t) -> c_int;
        // logmath_t *logmath_init(float64 base, int shift, int use_table);
        pub fn logmath_init(base: f64, shift: c_int, use_table: c_int) -> *mut logmath_t;
        // int logmath_free(logmath_t *lmath);   (refcounted)
        pub fn logmath_free(lmath: *mut logmath_t) -> c_int;
        // void cmn_live_set(cmn_t *cmn, mfcc_t const *vec);
        pub fn cmn_live_set(cmn: *mut cmn_t, vec: *const f32);
        // void cmn_live_get(cmn_t *cmn, mfcc_t *vec);
        pub fn cmn_live_get(cmn: *mut cmn_t, vec: *mut f32);
    }
}

/// Serialises decoder construction. `ps_init` touches process-global
/// sphinxbase state (log stream, debug level), so two threads must not run it
/// at the same time. Construction is rare and slow anyway, so this costs
/// nothing measurable.
static INIT_LOCK: Mutex<()> = Mutex::new(());
static SILENCE_LOG: Once = Once::new();

const GRAMMAR_SEARCH: &str = "grammar";
/// The language model's search, as pocketsphinx names it (`PS_DEFAULT_SEARCH`).
const LM_SEARCH: &str = "_default";
/// The phone loop's search ([`Decoder::phone_loop`]).
const LOOP_SEARCH: &str = "phones";
/// Natural-log units of one unit of a path score: scores are in log base 1.0001, shifted right
/// by 10 bits (the library's `SENSCR_SHIFT`).
pub const SCORE_NATS: f64 = 1024.0 * 0.000_099_995;

/// A stretch of a hypothesis: a word, a silence or noise filler, or (for the phone loop) a
/// phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First frame (100 a second).
    pub start: i32,
    /// Last frame, included.
    pub end: i32,
    /// Acoustic score, in the library's scaled log units ([`SCORE_NATS`]).
    pub ascr: i32,
    /// A silence or noise filler, not a word.
    pub filler: bool,
}

/// A pocketsphinx decoder (acoustic model + dictionary + LM or JSGF grammar).
///
/// Audio must be 16 kHz, mono, signed 16-bit native-endian PCM.
pub struct Decoder {
    ps: *mut ffi::ps_decoder_t,
    config: *mut ffi::cmd_ln_t,
    /// Strings handed to `cmd_ln_parse_r`. Its header says they must stay
    /// valid as long as the returned `cmd_ln_t` (older sphinxbase used the
    /// argv name strings as hash keys without copying). Freed only after
    /// `ps_free` + `cmd_ln_free_r` in `Drop`.
    _args: Vec<CString>,
    /// Cepstral mean right after init (= the model's `-cmninit`), restored
    /// by `reset_cmn()`.
    cmn_init: Vec<f32>,
    in_utt: bool,
    /// At least one utterance has been started (so `ps_get_hyp` has a search
    /// state to report on).
    started_once: bool,
    /// The search used when a job names none: the grammar if one was given,
    /// else the language model's.
    default_search: CString,
    /// The active search's name.
    active: CString,
}

// SAFETY: `Decoder` exclusively owns its `ps_decoder_t` and `cmd_ln_t`; no
// retained references are ever handed out, so nothing else can reach that
// memory. pocketsphinx keeps no thread-local state and no thread affinity for
// a decoder, so moving it to another thread and using it there is fine as
// long as only one thread uses it at a time — which `&mut self` on every
// method guarantees. (Process-global bits touched in `ps_init` are guarded
// by `INIT_LOCK`.) It is deliberately NOT `Sync`: the C API is not safe for
// concurrent calls on one decoder (even `ps_get_hyp` rewrites internal
// buffers), and raw pointers already make the type `!Sync`.
unsafe impl Send for Decoder {}

fn path_cstring(p: &Path, what: &'static str) -> Result<CString, DecoderError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| DecoderError::PathNul {
        what,
        path: p.to_owned(),
    })
}

/// The checks that need no decoder: a search to run, the model files present.
fn check_files(
    hmm: &Path,
    dict: &Path,
    lm: Option<&Path>,
    has_grammar: bool,
) -> Result<(), DecoderError> {
    if lm.is_none() && !has_grammar {
        return Err(DecoderError::NoSearch);
    }
    // Pre-validate files for clear error messages. (Measured: for missing files ps_init itself
    // also just returns NULL. Corrupt model files are NOT survivable — a truncated `mdef`
    // segfaults inside ps_init — so the model files must be trusted.)
    if !hmm.join("mdef").is_file() {
        return Err(DecoderError::NoMdef(hmm.to_owned()));
    }
    if !dict.is_file() {
        return Err(DecoderError::NoDict(dict.to_owned()));
    }
    if let Some(lm) = lm
        && !lm.is_file()
    {
        return Err(DecoderError::NoLm(lm.to_owned()));
    }
    Ok(())
}

/// Checks what [`Decoder::new`] and [`Decoder::add_grammar`] would refuse, without building a
/// decoder (which loads the acoustic model, the dictionary and the language model: ~95 MB and
/// most of a second): the search and the model files, and that every grammar parses, has a
/// public rule, and uses only words of the dictionary (or the acoustic model's noise
/// dictionary), matched case-sensitively as the decoder matches them. What remains for the
/// decoder to find is a corrupt model file.
///
/// `grammar` is the default search's grammar (without one, `lm` must be given), `named` the
/// grammars a session may choose.
pub fn validate(
    hmm: &Path,
    dict: &Path,
    lm: Option<&Path>,
    grammar: Option<&str>,
    named: &[&str],
) -> Result<(), DecoderError> {
    check_files(hmm, dict, lm, grammar.is_some())?;
    let mut words = std::collections::BTreeSet::new();
    for g in grammar.iter().chain(named) {
        grammar_words(g, &mut words)?;
    }
    if words.is_empty() {
        return Ok(());
    }
    for file in [dict.to_owned(), hmm.join("noisedict")] {
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            // The noise dictionary is optional for the decoder too.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file != dict => continue,
            Err(e) => {
                return Err(DecoderError::DictRead {
                    path: file,
                    reason: e.to_string(),
                });
            }
        };
        for line in text.split(|b| *b == b'\n') {
            let word = line
                .split(|b| b.is_ascii_whitespace())
                .find(|w| !w.is_empty());
            if let Some(w) = word {
                words.remove(w);
            }
        }
    }
    match words.into_iter().next() {
        None => Ok(()),
        Some(w) => Err(DecoderError::GrammarWord(
            String::from_utf8_lossy(&w).into_owned(),
        )),
    }
}

/// A JSGF grammar and the FSG built from its public rule; dropping it frees both, the FSG first.
struct Fsg {
    jsgf: *mut ffi::jsgf_t,
    fsg: *mut ffi::fsg_model_t,
}

impl Fsg {
    /// Parses `text` and builds its public rule with `lmath` and language weight `lw`.
    ///
    /// # Safety
    /// `lmath` is a valid logmath object (the FSG keeps its own reference).
    unsafe fn build(text: &CStr, lmath: *mut ffi::logmath_t, lw: f32) -> Result<Fsg, DecoderError> {
        // SAFETY: `text` is NUL-terminated; each object is freed on every path (by `Fsg`'s drop
        // once both exist).
        unsafe {
            let jsgf = ffi::jsgf_parse_string(text.as_ptr(), std::ptr::null_mut());
            if jsgf.is_null() {
                return Err(DecoderError::GrammarParse);
            }
            let rule = ffi::jsgf_get_public_rule(jsgf);
            if rule.is_null() {
                ffi::jsgf_grammar_free(jsgf);
                return Err(DecoderError::GrammarNoPublicRule);
            }
            let fsg = ffi::jsgf_build_fsg(jsgf, rule, lmath, lw);
            if fsg.is_null() {
                ffi::jsgf_grammar_free(jsgf);
                return Err(DecoderError::GrammarFsg);
            }
            Ok(Fsg { jsgf, fsg })
        }
    }
}

impl Drop for Fsg {
    fn drop(&mut self) {
        // SAFETY: both were made by `Fsg::build` and are freed only here.
        unsafe {
            ffi::fsg_model_free(self.fsg);
            ffi::jsgf_grammar_free(self.jsgf);
        }
    }
}

/// Parses a JSGF grammar as the decoder will and adds the words of its public rule to `words`.
fn grammar_words(
    text: &str,
    words: &mut std::collections::BTreeSet<Vec<u8>>,
) -> Result<(), DecoderError> {
    let text = CString::new(text).map_err(|_| DecoderError::GrammarNul)?;
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    SILENCE_LOG.call_once(|| unsafe { ffi::err_set_logfp(std::ptr::null_mut()) });
    // SAFETY: every object created here is freed here on every path; the FSG is read only
    // through the mirrored public prefix of `fsg_model_t` (offsets asserted above), its
    // `n_word` vocabulary entries being NUL-terminated strings it owns until freed.
    unsafe {
        // pocketsphinx's own -logbase, without the lookup table (only the words are read).
        let lmath = ffi::logmath_init(1.0001, 0, 0);
        if lmath.is_null() {
            return Err(DecoderError::Failed("logmath_init"));
        }
        let built = Fsg::build(&text, lmath, 1.0);
        let Ok(fsg) = built else {
            ffi::logmath_free(lmath);
            return built.map(|_| ());
        };
        let prefix = fsg.fsg as *const ffi::fsg_model_prefix;
        let n = (*prefix).n_word.max(0) as usize;
        let vocab = (*prefix).vocab;
        for i in 0..n {
            let w = *vocab.add(i);
            if !w.is_null() {
                words.insert(CStr::from_ptr(w).to_bytes().to_vec());
            }
        }
        drop(fsg);
        ffi::logmath_free(lmath);
    }
    Ok(())
}

impl Decoder {
    /// Create a decoder.
    ///
    /// * `hmm`  – acoustic model directory (must contain `mdef`),
    /// * `dict` – pronunciation dictionary,
    /// * `lm`   – optional n-gram LM (`.lm.bin`/`.lm`/`.DMP`),
    /// * `jsgf` – optional JSGF grammar *text*; if given it becomes the active
    ///   search (the LM, if also given, is still loaded but inactive).
    ///
    /// At least one of `lm` / `jsgf` is required. pocketsphinx's logging is
    /// disabled process-wide (`err_set_logfp(NULL)`) on first use.
    ///
    /// The model files are trusted input: missing files give `Err`, but a
    /// corrupt acoustic model can crash inside the C library.
    pub fn new(
        hmm: &Path,
        dict: &Path,
        lm: Option<&Path>,
        jsgf: Option<&str>,
    ) -> Result<Decoder, DecoderError> {
        check_files(hmm, dict, lm, jsgf.is_some())?;
        let jsgf_c = match jsgf {
            Some(g) => Some(CString::new(g).map_err(|_| DecoderError::GrammarNul)?),
            None => None,
        };

        let mut args: Vec<CString> = vec![
            CString::new("-hmm").unwrap(),
            path_cstring(hmm, "hmm")?,
            CString::new("-dict").unwrap(),
            path_cstring(dict, "dict")?,
        ];
        if let Some(lm) = lm {
            args.push(CString::new("-lm").unwrap());
            args.push(path_cstring(lm, "lm")?);
        }
        let mut dec = Decoder::init(args)?;
        if let Some(g) = jsgf_c {
            let name = CString::new(GRAMMAR_SEARCH).unwrap();
            dec.add_jsgf(&name, &g)?;
            dec.activate(name.clone())?;
            dec.default_search = name;
        }
        Ok(dec)
    }

    /// Parses `args` into a configuration and builds the decoder from it, with its initial
    /// cepstral mean; its search is the language model's until another is activated.
    fn init(args: Vec<CString>) -> Result<Decoder, DecoderError> {
        // argc is even, so cmd_ln_parse_r does not skip argv[0].
        let mut argv: Vec<*mut c_char> = args.iter().map(|s| s.as_ptr() as *mut c_char).collect();

        let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        SILENCE_LOG.call_once(|| unsafe { ffi::err_set_logfp(std::ptr::null_mut()) });

        // SAFETY: argv points at NUL-terminated strings that outlive the
        // config (they are moved into the Decoder); cmd_ln_parse_r does not
        // write through argv. ps_args() returns a static table.
        let config = unsafe {
            ffi::cmd_ln_parse_r(
                std::ptr::null_mut(),
                ffi::ps_args(),
                argv.len() as i32,
                argv.as_mut_ptr(),
                1,
            )
        };
        if config.is_null() {
            return Err(DecoderError::Failed("cmd_ln_parse_r"));
        }
        // SAFETY: config is a valid cmd_ln_t; ps_init takes its own reference.
        let ps = unsafe { ffi::ps_init(config) };
        if ps.is_null() {
            unsafe { ffi::cmd_ln_free_r(config) };
            return Err(DecoderError::Init);
        }
        // From here on Drop cleans up.
        let mut dec = Decoder {
            ps,
            config,
            _args: args,
            cmn_init: Vec::new(),
            in_utt: false,
            started_once: false,
            default_search: CString::new(LM_SEARCH).unwrap(),
            active: CString::new(LM_SEARCH).unwrap(),
        };
        let cmn = dec.cmn_ptr()?;
        // SAFETY: cmn_ptr() checked the pointer and veclen; buffer has veclen floats.
        unsafe {
            let n = (*cmn).veclen as usize;
            dec.cmn_init = vec![0.0; n];
            ffi::cmn_live_get(cmn, dec.cmn_init.as_mut_ptr());
        }
        Ok(dec)
    }

    /// A decoder that recognizes free phone sequences (context-dependent phones, any phone
    /// after any other, no phonetic language model): the best acoustic match of any speech,
    /// against which the [`segments`](Self::segments) of a grammar's hypothesis are compared.
    ///
    /// Its beams are narrower than the library's defaults (`1e-10` against `1e-48`): a full
    /// triphone loop with the default beams decodes about three times slower than real time;
    /// at `1e-10` it takes about a sixth of real time (measured on 2.8 s of speech) and its
    /// score stays close to the wide one's.
    pub fn phone_loop(hmm: &Path, dict: &Path) -> Result<Decoder, DecoderError> {
        if !hmm.join("mdef").is_file() {
            return Err(DecoderError::NoMdef(hmm.to_owned()));
        }
        if !dict.is_file() {
            return Err(DecoderError::NoDict(dict.to_owned()));
        }
        let mut args: Vec<CString> = vec![
            CString::new("-hmm").unwrap(),
            path_cstring(hmm, "hmm")?,
            CString::new("-dict").unwrap(),
            path_cstring(dict, "dict")?,
        ];
        for (k, v) in [("-beam", "1e-10"), ("-pbeam", "1e-10")] {
            args.push(CString::new(k).unwrap());
            args.push(CString::new(v).unwrap());
        }
        let mut dec = Decoder::init(args)?;
        let name = CString::new(LOOP_SEARCH).unwrap();
        // SAFETY: valid decoder; a NULL language model is documented as "no phonetic LM".
        if unsafe { ffi::ps_set_allphone(dec.ps, name.as_ptr(), std::ptr::null_mut()) } < 0 {
            return Err(DecoderError::Failed("ps_set_allphone"));
        }
        dec.activate(name.clone())?;
        dec.default_search = name;
        Ok(dec)
    }

    /// The active search is a grammar (not the language model, not the phone loop).
    pub fn grammar_active(&self) -> bool {
        let name = self.active.as_bytes();
        name == GRAMMAR_SEARCH.as_bytes() || name.starts_with(b"g:")
    }

    /// The current hypothesis's segments (its words, silences and noise fillers; for the
    /// phone loop, its phones) with their acoustic scores; empty before any hypothesis.
    pub fn segments(&mut self) -> Vec<Segment> {
        let mut out = Vec::new();
        if !self.started_once {
            return out;
        }
        let mut score: i32 = 0;
        // SAFETY: valid decoder; out pointer is a live i32.
        if unsafe { ffi::ps_get_hyp(self.ps, &mut score) }.is_null() {
            return out;
        }
        // SAFETY: valid decoder; the iterator is walked to its end (ps_seg_next frees it and
        // returns NULL there) and never used after; the word is read before the next step;
        // the out pointers are live integers.
        unsafe {
            let mut seg = ffi::ps_seg_iter(self.ps);
            while !seg.is_null() {
                let (mut ascr, mut l, mut b) = (0, 0, 0);
                ffi::ps_seg_prob(seg, &mut ascr, &mut l, &mut b);
                let (mut start, mut end) = (0, 0);
                ffi::ps_seg_frames(seg, &mut start, &mut end);
                let word = ffi::ps_seg_word(seg);
                // Fillers are named <sil>, <s>, </s>, [NOISE], +SPN+, ... in the noise
                // dictionary and the acoustic model.
                let filler = word.is_null() || matches!(*word as u8, b'<' | b'[' | b'+');
                out.push(Segment {
                    start,
                    end,
                    ascr,
                    filler,
                });
                seg = ffi::ps_seg_next(seg);
            }
        }
        out
    }

    /// Adds a named grammar's search (as `g:<name>`), for [`use_search`](Self::use_search).
    pub fn add_grammar(&mut self, name: &str, text: &str) -> Result<(), DecoderError> {
        let text = CString::new(text).map_err(|_| DecoderError::GrammarNul)?;
        let name = CString::new(format!("g:{name}")).map_err(|_| DecoderError::GrammarNul)?;
        self.add_jsgf(&name, &text)
    }

    /// Makes the named grammar's search active for the next utterance; `None`: the default
    /// one (the grammar given to [`new`](Self::new), else the language model).
    pub fn use_search(&mut self, grammar: Option<&str>) -> Result<(), DecoderError> {
        let name = match grammar {
            None => self.default_search.clone(),
            Some(g) => CString::new(format!("g:{g}")).map_err(|_| DecoderError::GrammarNul)?,
        };
        if name == self.active {
            return Ok(());
        }
        self.activate(name)
    }

    fn activate(&mut self, name: CString) -> Result<(), DecoderError> {
        // SAFETY: valid decoder; the name is a NUL-terminated string alive for the call.
        if unsafe { ffi::ps_set_search(self.ps, name.as_ptr()) } < 0 {
            return Err(DecoderError::Failed("ps_set_search"));
        }
        self.active = name;
        Ok(())
    }

    /// Equivalent of `ps_set_jsgf_string`, without the leak: adds the search `name`.
    fn add_jsgf(&mut self, name: &CStr, text: &CStr) -> Result<(), DecoderError> {
        let lw_key = CString::new("-lw").unwrap();
        // SAFETY: valid decoder/config; every object created here is freed
        // here on every path. ps_set_fsg takes its own reference to the FSG
        // (and copies what it needs), so dropping ours and the JSGF
        // afterwards is what upstream's fixed ps_set_jsgf_string does too.
        unsafe {
            let lw = ffi::cmd_ln_float_r(self.config, lw_key.as_ptr()) as f32;
            let fsg = Fsg::build(text, ffi::ps_get_logmath(self.ps), lw)?;
            let rv = ffi::ps_set_fsg(self.ps, name.as_ptr(), fsg.fsg);
            drop(fsg);
            if rv < 0 {
                return Err(DecoderError::GrammarRejected);
            }
        }
        Ok(())
    }

    /// Begin an utterance.
    pub fn start(&mut self) -> Result<(), DecoderError> {
        if self.in_utt {
            return Err(DecoderError::Misuse("utterance already started"));
        }
        // SAFETY: self.ps is valid for the lifetime of self.
        if unsafe { ffi::ps_start_utt(self.ps) } < 0 {
            return Err(DecoderError::Failed("ps_start_utt"));
        }
        self.in_utt = true;
        self.started_once = true;
        Ok(())
    }

    /// Feed 16 kHz mono s16 samples (any length; chunking is up to the caller).
    pub fn process(&mut self, pcm: &[i16]) -> Result<(), DecoderError> {
        if !self.in_utt {
            return Err(DecoderError::Misuse(
                "process() called outside an utterance",
            ));
        }
        if pcm.is_empty() {
            return Ok(());
        }
        // SAFETY: pointer/length come from a valid slice that the C side only
        // reads during the call.
        let rv = unsafe { ffi::ps_process_raw(self.ps, pcm.as_ptr(), pcm.len(), 0, 0) };
        if rv < 0 {
            return Err(DecoderError::ProcessRaw(rv));
        }
        Ok(())
    }

    /// Current best hypothesis (during an utterance: partial result; after
    /// `finish`: the final result). `None` if there is nothing yet.
    pub fn partial(&mut self) -> Option<String> {
        if !self.started_once {
            return None;
        }
        self.hyp()
    }

    /// End the utterance and return the final hypothesis (`None` if empty).
    pub fn finish(&mut self) -> Result<Option<String>, DecoderError> {
        if !self.in_utt {
            return Err(DecoderError::Misuse("finish() called outside an utterance"));
        }
        self.in_utt = false;
        // SAFETY: valid decoder.
        if unsafe { ffi::ps_end_utt(self.ps) } < 0 {
            return Err(DecoderError::Failed("ps_end_utt"));
        }
        Ok(self.hyp())
    }

    /// Restore the live cepstral-mean estimate to its initial value.
    ///
    /// pocketsphinx adapts the cepstral mean (CMN) continuously and carries it
    /// over from one utterance to the next. An utterance of pure noise that
    /// passes the VAD (e.g. white noise) drags the estimate far away, and the
    /// following utterances are then misrecognised (measured: 5 clean
    /// utterances in a row returned nothing after 2 s of noise). Call this
    /// between utterances to start from a clean state. Not allowed inside an
    /// utterance.
    pub fn reset_cmn(&mut self) -> Result<(), DecoderError> {
        if self.in_utt {
            return Err(DecoderError::Misuse("reset_cmn() inside an utterance"));
        }
        let cmn = self.cmn_ptr()?;
        // SAFETY: valid cmn_t with veclen == cmn_init.len() (checked in cmn_ptr
        // and at init; the acoustic model never changes after init).
        unsafe { ffi::cmn_live_set(cmn, self.cmn_init.as_ptr()) };
        Ok(())
    }

    /// The decoder's `cmn_t`, with sanity checks on the mirrored layout.
    fn cmn_ptr(&mut self) -> Result<*mut ffi::cmn_t, DecoderError> {
        // SAFETY: valid decoder; feat_t/cmn_t prefixes mirror the public
        // sphinxbase headers (offsets asserted at compile time), and we only
        // read through them.
        unsafe {
            let feat = ffi::ps_get_feat(self.ps);
            if feat.is_null() {
                return Err(DecoderError::NoFeat);
            }
            let cmn = (*feat).cmn_struct;
            if cmn.is_null() {
                return Err(DecoderError::CmnDisabled);
            }
            let n = (*cmn).veclen;
            if n != (*feat).cepsize
                || !(1..=64).contains(&n)
                || (!self.cmn_init.is_empty() && n as usize != self.cmn_init.len())
            {
                return Err(DecoderError::CmnLayout(n));
            }
            Ok(cmn)
        }
    }

    fn hyp(&mut self) -> Option<String> {
        let mut score: i32 = 0;
        // SAFETY: valid decoder; out pointer is a live i32 (the header does not
        // document NULL as allowed, so we never pass NULL).
        let p = unsafe { ffi::ps_get_hyp(self.ps, &mut score) };
        if p.is_null() {
            return None;
        }
        // SAFETY: non-NULL, NUL-terminated, owned by the decoder and valid
        // until the next call into it; we copy it out immediately.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy();
        let s = s.trim();
        if s.is_empty() {
            None
        } else {
            Some(s.to_string())
        }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: both pointers are valid and owned by us. ps_free drops the
        // decoder's own references to the config; ours is released last.
        // `_args` (which the config may point into) is dropped after this
        // function returns, i.e. after both are gone.
        unsafe {
            ffi::ps_free(self.ps);
            let _rc = ffi::cmd_ln_free_r(self.config);
            debug_assert_eq!(_rc, 0, "cmd_ln_t still referenced after ps_free");
        }
    }
}

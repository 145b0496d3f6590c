//! Rules of the code base that check themselves (in the spirit of rust-analyzer's `tidy`).
//!
//! Each rule is one test, reading the sources as text. A failure names the rule, the places
//! that break it and why the rule exists, so the fix is obvious without reading this file.
//! Code under `#[cfg(test)]` is exempt from the rules about production code.

use std::fs;
use std::path::{Path, PathBuf};

/// The workspace's members (the root package is "."), from the root manifest.
fn members() -> Vec<String> {
    let manifest = fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let list = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = ["))
        .expect("tidy: the root manifest lists its members on one line");
    let mut out = vec![".".to_owned()];
    out.extend(
        list.trim_end_matches(']')
            .split(',')
            .map(|m| m.trim().trim_matches('"').to_owned())
            .filter(|m| !m.is_empty()),
    );
    out
}

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file below `dir` (relative to the workspace root), sorted.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    out.sort();
    out
}

/// A path relative to the workspace root, for messages.
fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The lines of `src` that are production code, with their 1-based numbers: items marked
/// `#[cfg(test)]` (the attribute, and the item up to its closing brace or semicolon) and comments
/// are left out. Braces inside string and character literals are skipped well enough for this
/// code base (no raw strings with unbalanced braces in production code).
fn production_lines(src: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut skipping = false; // inside a #[cfg(test)] item
    let mut depth = 0i32; // brace depth inside the skipped item
    let mut opened = false; // the skipped item's body has started
    for (i, line) in src.lines().enumerate() {
        let code = strip_comment(line);
        if !skipping && code.trim_start().starts_with("#[cfg(test)]") {
            skipping = true;
            depth = 0;
            opened = false;
            continue;
        }
        if skipping {
            for c in code_braces(&code) {
                depth += c;
                opened = true;
            }
            // An item without a body (`#[cfg(test)] use ...;`) ends at its semicolon.
            if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                skipping = false;
            }
            continue;
        }
        if !code.trim().is_empty() {
            out.push((i + 1, code));
        }
    }
    out
}

/// `line` without a trailing `//` comment (not inside a string literal).
fn strip_comment(line: &str) -> String {
    let mut in_str = false;
    let mut prev = ' ';
    let chars: Vec<char> = line.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '"' && prev != '\\' {
            in_str = !in_str;
        }
        if !in_str && c == '/' && chars.get(i + 1) == Some(&'/') {
            return chars[..i].iter().collect();
        }
        prev = c;
    }
    line.to_owned()
}

/// +1 for each `{` and -1 for each `}` outside string and character literals.
fn code_braces(code: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let mut in_str = false;
    let mut prev = ' ';
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' && prev != '\\' {
            in_str = !in_str;
        } else if !in_str && c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3; // a character literal such as '{'
            prev = '\'';
            continue;
        } else if !in_str && c == '{' {
            out.push(1);
        } else if !in_str && c == '}' {
            out.push(-1);
        }
        prev = if prev == '\\' && c == '\\' { ' ' } else { c };
        i += 1;
    }
    out
}

/// Fails with the rule, its reason and the places that break it.
fn report(rule: &str, why: &str, places: Vec<String>) {
    assert!(
        places.is_empty(),
        "tidy rule broken: {rule}\nwhy: {why}\nat:\n  {}\n",
        places.join("\n  ")
    );
}

/// The `[dependencies]` section of a manifest, as the names of the crates it lists.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside
            && !line.starts_with('#')
            && let Some((name, _)) = line.split_once('=')
        {
            // `name = "1"`, `name = { ... }` or `name.workspace = true`.
            let name = name.trim();
            out.push(name.split('.').next().unwrap_or(name).to_owned());
        }
    }
    out
}

/// Runtimes and the WebRTC stack, which `core` must not depend on.
const RUNTIME_CRATES: [&str; 7] = [
    "tokio",
    "actix",
    "actix-rt",
    "actix-web",
    "awc",
    "webrtc",
    "rtc",
];

#[test]
fn core_has_no_runtime() {
    let why = "core holds the pure state machines: deterministic, unit-tested without a runtime, \
               time passed in as `Instant`. Put I/O in media/, actors/ or engines/.";
    let manifest = fs::read_to_string(root().join("core/Cargo.toml")).unwrap();
    let mut places: Vec<String> = dependencies(&manifest)
        .into_iter()
        .filter(|d| RUNTIME_CRATES.contains(&d.as_str()))
        .map(|d| format!("core/Cargo.toml: depends on {d}"))
        .collect();
    for file in rust_files("core/src") {
        let src = fs::read_to_string(&file).unwrap();
        for (n, line) in production_lines(&src) {
            let t = line.trim_start();
            if RUNTIME_CRATES
                .iter()
                .any(|c| t.contains(&format!("{}::", c.replace('-', "_"))))
            {
                places.push(format!("{}:{n}: {}", rel(&file), line.trim()));
            }
        }
    }
    report("core depends on none of tokio, actix, webrtc", why, places);
}

#[test]
fn core_never_reads_the_clock() {
    let why = "core's state machines take the time as an argument, so tests drive them with any \
               clock and their decisions replay exactly. Read the clock in the caller.";
    let mut places = Vec::new();
    for file in rust_files("core/src") {
        let src = fs::read_to_string(&file).unwrap();
        for (n, line) in production_lines(&src) {
            if ["Instant::now(", "SystemTime::now(", "Utc::now("]
                .iter()
                .any(|p| line.contains(p))
            {
                places.push(format!("{}:{n}: {}", rel(&file), line.trim()));
            }
        }
    }
    report("core never reads the clock outside tests", why, places);
}

/// Where JSON may be built ad hoc with `json!`: the protocol modules (one home for each wire
/// format) and the HTTP edge.
const JSON_HOMES: [&str; 3] = ["core/src/dialog.rs", "core/src/page.rs", "src/http/"];

#[test]
fn json_is_built_only_in_protocol_modules() {
    let why = "a wire format has one home, with its tests; `json!` elsewhere restates a format \
               that can then drift from its documented shape. Add a constructor to the protocol \
               module (core/src/dialog.rs, core/src/page.rs) or a serde type next to the client.";
    let mut places = Vec::new();
    for dir in ["core/src", "media/src", "actors/src", "engines/src", "src"] {
        for file in rust_files(dir) {
            let name = rel(&file);
            if JSON_HOMES.iter().any(|h| name.starts_with(h)) {
                continue;
            }
            let src = fs::read_to_string(&file).unwrap();
            for (n, line) in production_lines(&src) {
                if line.contains("json!(") {
                    places.push(format!("{name}:{n}: {}", line.trim()));
                }
            }
        }
    }
    report(
        "no `json!` outside the protocol modules and the HTTP edge",
        why,
        places,
    );
}

/// The code that parses what the network sends: offers, STUN, dialog messages, WebSocket
/// frames, RTP payloads (jitter, DTMF, Opus), HTTP requests.
const NETWORK_INPUT: [&str; 14] = [
    "core/src/sdp.rs",
    "core/src/ice.rs",
    "core/src/stun.rs",
    "core/src/dialog.rs",
    "core/src/ws_frame.rs",
    "core/src/jitter.rs",
    "core/src/dtmf.rs",
    "core/src/codec.rs",
    "core/src/admission.rs",
    "media/src/",
    "actors/src/dialog/",
    "actors/src/dialog_wire.rs",
    "actors/src/codec/",
    "src/http/",
];

#[test]
fn no_bare_unwrap_on_network_input() {
    let why = "input from the network is hostile until checked: a panic there is a crash an \
               attacker can trigger. Return an error (a 400, an ignored packet, a logged \
               message) or, where the value cannot fail, say why with `expect(\"...\")`.";
    let mut places = Vec::new();
    for prefix in NETWORK_INPUT {
        let files = if prefix.ends_with('/') {
            rust_files(prefix)
        } else {
            vec![root().join(prefix)]
        };
        for file in files {
            let src = fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("tidy: {} listed as network input: {e}", rel(&file)));
            for (n, line) in production_lines(&src) {
                if line.contains(".unwrap()") {
                    places.push(format!("{}:{n}: {}", rel(&file), line.trim()));
                }
            }
        }
    }
    report("no bare `unwrap()` on network input paths", why, places);
}

#[test]
fn every_crate_uses_the_workspace_lints() {
    let why = "the workspace lints (documented public items among them) hold only for crates \
               that opt in with `[lints] workspace = true`; CI turns their warnings into errors.";
    let workspace = fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let mut places = Vec::new();
    if !workspace.contains("[workspace.lints.rust]") || !workspace.contains("missing_docs") {
        places.push("Cargo.toml: no [workspace.lints.rust] with missing_docs".to_owned());
    }
    for m in members() {
        let path = root().join(m).join("Cargo.toml");
        let manifest = fs::read_to_string(&path).unwrap_or_default();
        let opted_in = manifest
            .split("[lints]")
            .nth(1)
            .is_some_and(|rest| rest.trim_start().starts_with("workspace = true"));
        if !opted_in {
            places.push(format!("{}: no `[lints] workspace = true`", rel(&path)));
        }
    }
    report("every crate uses the workspace lints", why, places);
}

#[test]
fn the_filter_leaves_out_test_code() {
    // The rules above are only as good as `production_lines`: pin what it keeps.
    let src = "fn a() { x.unwrap() } // a comment with json!(..)\n\
               #[cfg(test)]\n\
               mod tests {\n\
                   fn b() { let c = '{'; Instant::now(); }\n\
                   fn d() { \"}\"; }\n\
               }\n\
               #[cfg(test)]\n\
               use std::time::Instant;\n\
               fn e() {}\n";
    let kept: Vec<String> = production_lines(src).into_iter().map(|(_, l)| l).collect();
    assert_eq!(kept, vec!["fn a() { x.unwrap() } ", "fn e() {}"]);
}

/// The crate a manifest names (`[package] name`), and its workspace dependencies.
fn workspace_edges(member: &str) -> (String, Vec<String>) {
    let manifest = fs::read_to_string(root().join(member).join("Cargo.toml")).unwrap();
    let name = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("name = "))
        .map(|n| n.trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("tidy: {member}/Cargo.toml has no package name"));
    let mut deps: Vec<String> = dependencies(&manifest)
        .into_iter()
        .filter(|d| d.starts_with("voicegate-"))
        .collect();
    deps.sort();
    (name, deps)
}

#[test]
fn the_documented_crate_graph_is_the_real_one() {
    let why = "ARCHITECTURE.md is the map readers trust; its list of which crate depends on which \
               must say what the manifests say. Update the list (and the diagram above it) with \
               the manifest.";
    let doc = fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    // Lines of the form "- `voicegate-x` → `voicegate-y`, `voicegate-z`" (or "→ nothing").
    let mut documented: Vec<(String, Vec<String>)> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("- `voicegate"))
        .filter_map(|l| l.split_once('→'))
        .map(|(name, deps)| {
            let name = format!("voicegate{}", name.trim().trim_end_matches('`'));
            let mut deps: Vec<String> = deps
                .split(',')
                .map(|d| d.trim().trim_matches('`').to_owned())
                .filter(|d| d.starts_with("voicegate"))
                .collect();
            deps.sort();
            (name, deps)
        })
        .collect();
    documented.sort();
    let mut real: Vec<(String, Vec<String>)> =
        members().iter().map(|m| workspace_edges(m)).collect();
    real.sort();
    let places: Vec<String> = real
        .iter()
        .filter(|r| !documented.contains(r))
        .map(|(n, d)| format!("the manifests say: {n} → {}", d.join(", ")))
        .chain(
            documented
                .iter()
                .filter(|d| !real.contains(d))
                .map(|(n, d)| format!("ARCHITECTURE.md says: {n} → {}", d.join(", "))),
        )
        .collect();
    report(
        "ARCHITECTURE.md lists the crate graph as it is",
        why,
        places,
    );
}

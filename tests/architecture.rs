//! The walls between rooms, kept by machine (docs/architecture.md, "Walls").
//!
//! Reads every file under `src/`, collects the `crate::…` paths its non-test code names (in
//! `use` lines and inline), and fails on an arrow the architecture forbids, with the rule's
//! reason. `#[cfg(test)]` modules are not read: a room's own tests may drive it with the
//! simulator or a store. A room is a top-level module: `src/<room>.rs` or `src/<room>/…`.
//!
//! While the rooms are being redrawn, a known violation may stand in [`ALLOWED`]; the list
//! must only shrink: an entry that no longer occurs fails the test too (remove it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One forbidden arrow: no file of `from` may name anything of `to`.
struct Wall {
    from: &'static str,
    to: &'static [&'static str],
    why: &'static str,
}

const WALLS: &[Wall] = &[
    Wall {
        from: "jobs",
        to: &[
            "web",
            "broker",
            "views",
            "app",
            "virtual_printer",
            "controls",
        ],
        why: "the dispatcher knows no transport: jobs decides starts (I1-I4) without a web \
              page or an MQTT session; transports call jobs, never the other way",
    },
    Wall {
        from: "printer",
        to: &[
            "jobs",
            "web",
            "broker",
            "safety",
            "views",
            "app",
            "virtual_printer",
            "controls",
        ],
        why: "a printer link reports state and carries commands; it never decides to start \
              (that is jobs) and knows nobody who reads its state",
    },
    Wall {
        from: "store",
        to: &[
            "jobs",
            "web",
            "broker",
            "views",
            "app",
            "virtual_printer",
            "controls",
        ],
        why: "storage holds rows, not rules: what an action means for the rows lives in jobs/, \
              and no store code knows a page or a topic",
    },
    Wall {
        from: "sim",
        to: &[
            "jobs",
            "store",
            "web",
            "broker",
            "safety",
            "alerts",
            "notify",
            "views",
            "app",
            "virtual_printer",
            "controls",
        ],
        why: "the simulator speaks only printer protocols (MQTT, FTPS, SSDP, Moonraker); \
              the demo that wires it to a gateway belongs to app/",
    },
    Wall {
        from: "safety",
        to: &["web", "broker", "app", "virtual_printer", "controls"],
        why: "the trip path never waits on a page or a topic (I5): the safety HTTP API is a \
              web adapter in web/, and the benchmark wiring lives in app/",
    },
    Wall {
        from: "broker",
        to: &["web", "app", "virtual_printer"],
        why: "the MQTT tree and the web page render one printer read model that lives below \
              both (src/views.rs); the broker never borrows a web type",
    },
    Wall {
        from: "views",
        to: &[
            "web",
            "broker",
            "store",
            "safety",
            "app",
            "virtual_printer",
            "controls",
        ],
        why: "the printer read model is pure: computed from a snapshot and a plate, it knows \
              neither the page nor the topic that shows it, nor any storage",
    },
    Wall {
        from: "web",
        to: &["app"],
        why: "composition stands above every room: web/ receives the shared Gateway \
              (app/gateway.rs) and never reaches into the wiring of serve, demo or bench",
    },
    Wall {
        from: "alerts",
        to: &["web", "broker", "app"],
        why: "alerts are sent from the trip path and the dispatcher's watch; they know no page",
    },
    Wall {
        from: "camera",
        to: &[
            "jobs",
            "store",
            "web",
            "broker",
            "safety",
            "views",
            "sim",
            "app",
            "virtual_printer",
            "controls",
        ],
        why: "a camera only shows a picture: the hub reads printer cameras for pages and \
              history, and never taps, starts or blocks a print, nor knows who shows it",
    },
    Wall {
        from: "config",
        to: &["web", "jobs", "store", "sim", "app", "controls"],
        why: "config only assembles and validates each room's own section",
    },
    Wall {
        from: "virtual_printer",
        to: &["web", "broker", "sim", "safety", "alerts"],
        why: "a virtual printer is a door like the web page and the broker: its clients' \
              requests take printgate's own paths (controls.rs, the dispatcher), it borrows no \
              web or broker type, and it serves the printer protocol without the simulator \
              (shared framing lives in printer/bambu/mqtt_wire.rs)",
    },
    Wall {
        from: "controls",
        to: &["web", "broker", "virtual_printer", "sim", "safety"],
        why: "the one path of pause, resume, stop and the light knows no door it is called \
              from: the web page, the OctoPrint API and the virtual printers all call it",
    },
];

/// Files of `app/` that rooms below it may name: the shared handle the web handlers and the
/// broker's command executor receive. Everything else in `app/` is wiring for main.rs.
const APP_SHARED: &[&str] = &["gateway", "Gateway", "PrinterEntry"];

/// Known violations, `(file under src/, room it names)`. Must only shrink; empty at the end.
const ALLOWED: &[(&str, &str)] = &[("store/jobs.rs", "jobs")];

#[derive(Debug)]
struct Arrow {
    file: String,
    to_room: String,
    names: BTreeSet<String>,
}

fn room_of(rel: &str) -> &str {
    let first = rel.split('/').next().unwrap_or(rel);
    first.strip_suffix(".rs").unwrap_or(first)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments, string and char literals (replaced by spaces, so
/// `"crate::x"` in a message is not an import), and without `#[cfg(test)]` modules.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && !b
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_ascii_alphanumeric() || *p == b'_')
        {
            // Raw string r"…" / r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            'raw: while j < b.len() {
                if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                    j += 1 + hashes;
                    break 'raw;
                }
                j += 1;
            }
            out.push(b' ');
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.extend_from_slice(b"\"\"");
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if b.get(i + 1) == Some(&b'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
                out.push(b' ');
            } else if b.get(i + 2) == Some(&b'\'') {
                i += 3;
                out.push(b' ');
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    let code = String::from_utf8_lossy(&out).into_owned();
    strip_test_modules(&code)
}

/// Remove every `#[cfg(test)] mod name { … }` (comments and strings are already gone).
fn strip_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ");
        let open = trimmed.find(['{', ';']);
        if !is_mod || open.is_none() {
            out.push_str(&rest[..at + "#[cfg(test)]".len()]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..at]);
        let body_start = after.len() - trimmed.len() + open.unwrap_or(0);
        let body = &after[body_start..];
        if let Some(after_semicolon) = body.strip_prefix(';') {
            rest = after_semicolon;
            continue;
        }
        let mut depth = 0usize;
        let mut end = body.len();
        for (k, ch) in body.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &body[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first two segments of each path that starts at `crate::` (a use group gives one per
/// item: `crate::{a::b, c}` → `[a, b]`, `[c]`).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = code[from..].find("crate::") {
        let at = from + pos;
        from = at + "crate::".len();
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue; // `$crate::` or `mycrate::`
        }
        let tail = &code[from..];
        if let Some(group) = tail.strip_prefix('{') {
            let mut depth = 1usize;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        item.push(ch);
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                        item.push(ch);
                    }
                    ',' if depth == 1 => {
                        found.push(segments(&item));
                        item.clear();
                    }
                    _ => item.push(ch),
                }
            }
            found.push(segments(&item));
        } else {
            found.push(segments(tail));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

fn segments(path: &str) -> Vec<String> {
    let mut segs = Vec::new();
    let mut rest = path.trim_start();
    while segs.len() < 2 {
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segs.push(rest[..end].to_string());
        rest = rest[end..].trim_start();
        match rest.strip_prefix("::") {
            Some(r) => rest = r.trim_start(),
            None => break,
        }
    }
    segs
}

fn arrows(src_dir: &Path) -> Vec<Arrow> {
    let mut files = Vec::new();
    rust_files(src_dir, &mut files);
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(src_dir)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let room = room_of(&rel).to_string();
        let mut by_room: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for segs in crate_paths(&code_only(&text)) {
            let first = &segs[0];
            let target = if first.starts_with(|c: char| c.is_ascii_uppercase()) {
                // A name defined in (or re-exported by) the crate root.
                "lib".to_string()
            } else if src_dir.join(format!("{first}.rs")).exists() || src_dir.join(first).is_dir() {
                first.clone()
            } else {
                "lib".to_string()
            };
            if target == room {
                continue;
            }
            by_room.entry(target).or_default().insert(segs.join("::"));
        }
        for (to_room, names) in by_room {
            out.push(Arrow {
                file: rel.clone(),
                to_room,
                names,
            });
        }
    }
    out
}

/// The reason an arrow is forbidden, if it is.
fn forbidden(arrow: &Arrow) -> Option<String> {
    let from = room_of(&arrow.file);
    if from == "main.rs" || from == "main" || from == "app" {
        return None;
    }
    if arrow.to_room == "app" {
        let shared = arrow.names.iter().all(|n| {
            let second = n.split("::").nth(1).unwrap_or("");
            APP_SHARED.contains(&second)
        });
        if shared && from != "jobs" && from != "printer" && from != "store" && from != "sim" {
            return None;
        }
    }
    if arrow.to_room == "lib" && from != "lib" {
        return Some(
            "the crate root only declares rooms and re-exports for main.rs and the tests; \
             name the room that defines the item (app::Gateway, store::DATABASE_FILE, ...)"
                .to_string(),
        );
    }
    WALLS
        .iter()
        .find(|w| w.from == from && w.to.contains(&arrow.to_room.as_str()))
        .map(|w| w.why.to_string())
}

#[test]
fn rooms_keep_their_walls() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    let mut seen_allowed = BTreeSet::new();
    for arrow in arrows(&src) {
        let Some(why) = forbidden(&arrow) else {
            continue;
        };
        let key = (arrow.file.as_str(), arrow.to_room.as_str());
        if ALLOWED.contains(&key) {
            seen_allowed.insert(key.0.to_string() + " -> " + key.1);
            continue;
        }
        broken.push(format!(
            "src/{} -> {} ({}): forbidden because {}",
            arrow.file,
            arrow.to_room,
            arrow.names.iter().cloned().collect::<Vec<_>>().join(", "),
            why
        ));
    }
    let stale: Vec<String> = ALLOWED
        .iter()
        .map(|(f, r)| format!("{f} -> {r}"))
        .filter(|k| !seen_allowed.contains(k))
        .collect();
    assert!(
        broken.is_empty(),
        "{} arrow(s) break the walls between rooms (docs/architecture.md, \"Walls\"):\n{}",
        broken.len(),
        broken.join("\n")
    );
    assert!(
        stale.is_empty(),
        "these allowed violations no longer occur; remove them from ALLOWED in \
         tests/architecture.rs (the list only shrinks):\n{}",
        stale.join("\n")
    );
}

/// The reader itself: a forbidden arrow in code is found, one in a comment, a string or a
/// test module is not.
#[test]
fn the_reader_sees_code_not_text() {
    let src = r##"
        //! Docs naming crate::web::x are not code.
        use crate::{jobs::model::Job, store::Store};
        use crate::printer::{self, Model};
        fn f() { let s = "crate::web::views"; let r = r#"crate::broker"#; let c = '{';
                 crate::safety::latch::now(); }
        fn g<'a>(x: &'a str) -> &'a str { x }
        #[cfg(test)]
        mod tests { use crate::sim::SimPrinter; fn h() { if true { } } }
        fn after() { crate::alerts::send(); }
    "##;
    let paths = crate_paths(&code_only(src));
    let firsts: Vec<&str> = paths.iter().map(|p| p[0].as_str()).collect();
    assert_eq!(firsts, ["jobs", "store", "printer", "safety", "alerts"]);
    assert_eq!(paths[0], ["jobs", "model"]);
    assert_eq!(paths[2], ["printer"]);
}

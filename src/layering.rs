//! Keeps the layering true: every `crate::` path in `src/` points down
//! (or within its own layer), never up.
//!
//! ```text
//! server → http, quic → transport → context, stats, limits, auth, config, tls
//!        → hub → protocol → name
//! ```
//!
//! It reads the source files themselves, so it sees every `use` line and
//! every inline path (`crate::transport::…::run_session(…)`), in tests too.
//! Comment lines are skipped: a doc link may name a module above.

use std::path::{Path, PathBuf};

/// Each top-level module and its layer, the highest first.
const LAYERS: &[(&str, u8)] = &[
    ("fuzzing", 7),
    ("server", 6),
    ("http", 5),
    ("quic", 5),
    ("transport", 4),
    ("context", 3),
    ("stats", 3),
    ("limits", 3),
    ("auth", 3),
    ("config", 3),
    ("tls", 3),
    ("socket", 3),
    ("lab", 3),
    ("hub", 2),
    ("protocol", 1),
    ("name", 0),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("read src/").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules named by `crate::` paths on `line`.
fn crate_paths(line: &str) -> impl Iterator<Item = &str> {
    line.match_indices("crate::").map(move |(i, m)| {
        let rest = &line[i + m.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        &rest[..end]
    })
}

#[test]
fn no_crate_path_points_up_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut up = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src/");
        let first = rel.components().next().expect("a path");
        let module = first.as_os_str().to_str().expect("UTF-8 path");
        let module = module.strip_suffix(".rs").unwrap_or(module);
        if matches!(module, "main" | "lib" | "layering") {
            continue;
        }
        let own = layer(module)
            .unwrap_or_else(|| panic!("src/{module}: give it a layer in layering.rs's LAYERS"));
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for target in crate_paths(line) {
                // `crate::` followed by no module name (a macro's `$crate::`).
                let Some(theirs) = layer(target) else {
                    continue;
                };
                if theirs > own {
                    up.push(format!("src/{}:{}: {}", rel.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        up.is_empty(),
        "paths pointing up the layers:\n{}",
        up.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_path() {
    let line = "use crate::http::api::{json_bytes}; let x = crate::hub::Hub::new();";
    assert_eq!(crate_paths(line).collect::<Vec<_>>(), ["http", "hub"]);
    assert!(layer("http") > layer("transport"));
}

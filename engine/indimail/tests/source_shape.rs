//! The source stays readable by a newcomer (issue 18's rules, README "Layout"): no source
//! file over 1,000 lines and no function over 150 (test code aside), and no two top-level
//! modules of a crate that import each other, in any crate of the workspace. Read from the
//! files themselves, so a new long function or a new import cycle fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 1000;
const MAX_FN_LINES: usize = 150;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every crate's `src` folder (a folder holding `Cargo.toml` and `src/`).
fn crate_sources() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![workspace()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !p.is_dir() || name.starts_with('.') || name.starts_with("target") {
                continue;
            }
            if name == "src" && dir.join("Cargo.toml").is_file() {
                out.push(p);
            } else if !matches!(name.as_str(), "tests" | "benches" | "fuzz" | "src") {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The `.rs` files below `src`, test-only files (`tests.rs`, `tests/`) left out.
fn rust_files(src: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src").flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if name != "tests" {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The lines of a file without its `#[cfg(test)]` items.
fn code_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_start().starts_with("#[cfg(test)]") {
            i = item_end(&lines, i + 1) + 1;
            continue;
        }
        out.push(lines[i]);
        i += 1;
    }
    out
}

/// The last line of the item starting at `start` (rustfmt layout: it ends at the
/// first `}` back at the item's indentation, or at a `;` before any `{`).
fn item_end(lines: &[&str], start: usize) -> usize {
    let Some(first) = lines.get(start) else {
        return start;
    };
    let indent = first.len() - first.trim_start().len();
    let mut j = start;
    while j < lines.len() && !lines[j].contains('{') {
        if lines[j].trim_end().ends_with(';') {
            return j;
        }
        j += 1;
    }
    if j < lines.len() && one_line_block(lines[j]) {
        return j;
    }
    let close = format!("{}}}", " ".repeat(indent));
    let mut k = j + 1;
    while k < lines.len() {
        if lines[k].starts_with(&close) && !lines[k][indent..].starts_with("} else") {
            return k;
        }
        k += 1;
    }
    lines.len().saturating_sub(1)
}

fn one_line_block(line: &str) -> bool {
    let t = line.trim_end();
    t.ends_with('}') && t.matches('{').count() == t.matches('}').count()
}

/// `(lines, name, first line)` of each function in `lines`.
fn functions(lines: &[&str]) -> Vec<(usize, String, usize)> {
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let mut words = t.split_whitespace().peekable();
        let mut name = None;
        while let Some(w) = words.next() {
            if w == "fn" {
                name = words.next().map(|n| {
                    n.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or_default()
                        .to_string()
                });
                break;
            }
            let modifier = w.starts_with("pub")
                || matches!(w, "async" | "unsafe" | "const" | "extern" | "\"C\"");
            if !modifier {
                break;
            }
        }
        let Some(name) = name else { continue };
        let mut j = i;
        while j < lines.len() && !lines[j].contains('{') && !lines[j].trim_end().ends_with(';') {
            j += 1;
        }
        if j >= lines.len() || !lines[j].contains('{') {
            continue; // a declaration without a body
        }
        let end = item_end(lines, i);
        out.push((end - i + 1, name, i + 1));
    }
    out
}

#[test]
fn no_long_files_or_functions() {
    let root = workspace();
    let mut wrong = Vec::new();
    for src in crate_sources() {
        for f in rust_files(&src) {
            let text = std::fs::read_to_string(&f).expect("read source");
            let lines = code_lines(&text);
            let shown = f.strip_prefix(&root).unwrap_or(&f).display().to_string();
            if lines.len() > MAX_FILE_LINES {
                wrong.push(format!("{shown}: {} lines of code", lines.len()));
            }
            for (n, name, at) in functions(&lines) {
                if n > MAX_FN_LINES {
                    wrong.push(format!("{shown}:{at} fn {name}: {n} lines"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "over {MAX_FILE_LINES} lines per file or {MAX_FN_LINES} per function:\n{}",
        wrong.join("\n")
    );
}

/// The top-level modules of a crate and the ones each names through `crate::`.
fn module_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in rust_files(src) {
        let rel = f.strip_prefix(src).expect("below src");
        let first = rel.iter().next().expect("a name").to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if matches!(module.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        let named = imports.entry(module.clone()).or_default();
        let code: String = code_lines(&text)
            .iter()
            .map(|l| l.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let mut names: Vec<&str> = Vec::new();
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::{c, d}}`: the first name of each entry
                let group = group.split("};").next().unwrap_or_default();
                let mut depth = 0;
                let mut start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            names.push(group[start..i].trim());
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                names.push(group[start..].trim());
            } else {
                names.push(rest);
            }
            for n in names {
                let ident: String = n
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !ident.is_empty() && ident != module {
                    named.insert(ident);
                }
            }
        }
    }
    let known: BTreeSet<String> = imports.keys().cloned().collect();
    for named in imports.values_mut() {
        named.retain(|n| known.contains(n));
    }
    imports
}

#[test]
fn no_two_modules_import_each_other() {
    let root = workspace();
    let mut wrong = Vec::new();
    for src in crate_sources() {
        let imports = module_imports(&src);
        let shown = src
            .strip_prefix(&root)
            .unwrap_or(&src)
            .display()
            .to_string();
        for (a, named) in &imports {
            for b in named {
                if a < b && imports.get(b).is_some_and(|n| n.contains(a)) {
                    wrong.push(format!("{shown}: {a} <-> {b}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "modules importing each other:\n{}",
        wrong.join("\n")
    );
}

//! `indimail man --out DIR`: manual pages. One section-8 page per command of the clap
//! definition (`indimail.8`, `indimail-serve.8`, `indimail-user-add.8`, ...), so they never
//! drift from `--help`, and `indimail-control.5` with the control files and variables, taken
//! from README.md's tables at build time (one source for both).

use std::path::{Path, PathBuf};

/// README.md, whose control-file and variable tables become `indimail-control.5`.
const README: &str = include_str!("../../../README.md");

/// README sections (heading text) whose tables go into `indimail-control.5`, with the
/// man page section title each gets.
const CONTROL_SECTIONS: [(&str, &str); 3] = [
    ("### Control files", "CONTROL FILES"),
    ("### Access controls", "ACCESS CONTROLS"),
    ("### Variables", "ENVIRONMENT"),
];

/// Why pages could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ManError {
    /// Creating the directory or writing a page failed.
    #[error("{}: {source}", path.display())]
    Write {
        /// The directory or page.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

fn write_page(dir: &Path, name: &str, text: &[u8]) -> Result<PathBuf, ManError> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|source| ManError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn create_dir(dir: &Path) -> Result<(), ManError> {
    std::fs::create_dir_all(dir).map_err(|source| ManError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// The pages of `cmd` and its subcommands (`help` and hidden ones left out), depth first.
fn command_pages(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("indimail-rs");
    let mut text = Vec::new();
    man.render(&mut text)?;
    text.extend_from_slice(b".SH \"SEE ALSO\"\n\\fBindimail-control\\fR(5)\n");
    out.push((man.get_filename(), text));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command_pages(sub, out)?;
    }
    Ok(())
}

/// Escape text for roff: backslashes, and a leading `.` or `'` (control characters).
fn roff_escape(s: &str) -> String {
    let s = s.replace('\\', "\\e");
    match s.chars().next() {
        Some('.' | '\'') => format!("\\&{s}"),
        _ => s,
    }
}

/// A markdown cell as roff: `code` in bold, escapes done.
fn roff_cell(cell: &str) -> String {
    let mut out = String::new();
    for (i, part) in cell.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("\\fB{}\\fR", part.replace('\\', "\\e")));
        } else {
            out.push_str(&part.replace('\\', "\\e"));
        }
    }
    let out = out.trim();
    match out.chars().next() {
        Some('.' | '\'') => format!("\\&{out}"),
        _ => out.to_string(),
    }
}

/// The rows of the markdown tables in one README section, cells split, header and rule rows
/// dropped.
fn section_tables(heading: &str) -> Vec<(Vec<String>, Vec<Vec<String>>)> {
    let mut lines = README.lines().skip_while(|l| !l.starts_with(heading));
    if lines.next().is_none() {
        return Vec::new();
    }
    let mut tables = Vec::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Option<Vec<String>> = None;
    let mut in_code = false;
    for l in lines {
        if l.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && l.starts_with("### ") {
            break;
        }
        let t = l.trim();
        if !in_code && t.starts_with('|') {
            // `\|` inside a cell is an escaped bar.
            let cells: Vec<String> = t
                .trim_matches('|')
                .replace("\\|", "\u{0}")
                .split('|')
                .map(|c| c.replace('\u{0}', "|").trim().to_string())
                .collect();
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
            {
                continue;
            }
            match &header {
                None => header = Some(cells),
                Some(_) => rows.push(cells),
            }
        } else if let Some(h) = header.take() {
            tables.push((h, std::mem::take(&mut rows)));
        }
    }
    if let Some(h) = header {
        tables.push((h, rows));
    }
    tables
}

/// `indimail-control.5`.
fn control_page() -> Vec<u8> {
    let mut s = String::from(
        ".TH INDIMAIL-CONTROL 5 \"\" \"indimail-rs\" \"indimail-rs\"\n\
         .SH NAME\nindimail-control \\- control files and variables of indimail-rs\n\
         .SH DESCRIPTION\nControl files live in \\fI<home>/control\\fR (\\fBCONTROLDIR\\fR \
         overrides), one value or one entry per line; \\fB#\\fR starts a comment. \
         \\fBindimail config check\\fR validates them, \\fBindimail config show\\fR prints the \
         values in force, SIGHUP reloads them.\n",
    );
    for (heading, title) in CONTROL_SECTIONS {
        let tables = section_tables(heading);
        if tables.is_empty() {
            continue;
        }
        s.push_str(&format!(".SH \"{title}\"\n"));
        for (header, rows) in tables {
            for row in rows {
                let Some(first) = row.first() else { continue };
                s.push_str(&format!(".TP\n{}\n", roff_cell(first)));
                // A "meaning"/"effect" second column reads as the description; the others
                // are named.
                let rest: Vec<String> = row
                    .iter()
                    .zip(&header)
                    .enumerate()
                    .skip(1)
                    .filter(|(_, (c, _))| !c.is_empty())
                    .map(|(i, (c, h))| {
                        if i == 1 && matches!(h.as_str(), "meaning" | "effect") {
                            roff_cell(c)
                        } else {
                            format!("{}: {}", roff_escape(h), roff_cell(c))
                        }
                    })
                    .collect();
                for (i, r) in rest.iter().enumerate() {
                    if i > 0 {
                        s.push_str(".br\n");
                    }
                    s.push_str(r);
                    s.push('\n');
                }
            }
        }
    }
    s.push_str(".SH \"SEE ALSO\"\n\\fBindimail\\fR(8), \\fBindimail-config\\fR(8)\n");
    s.into_bytes()
}

/// Write every page of `commands` (the binary's command line) into `dir8` and of the control
/// files into `dir5`; the paths written.
pub fn write_pages(
    commands: &clap::Command,
    dir8: &Path,
    dir5: &Path,
) -> Result<Vec<PathBuf>, ManError> {
    let mut cmd = commands.clone().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    command_pages(&cmd, &mut pages).map_err(|source| ManError::Write {
        path: dir8.to_path_buf(),
        source,
    })?;
    create_dir(dir8)?;
    create_dir(dir5)?;
    let mut written = Vec::new();
    for (name, text) in pages {
        written.push(write_page(dir8, &name, &text)?);
    }
    written.push(write_page(dir5, "indimail-control.5", &control_page())?);
    Ok(written)
}

/// `indimail man --out DIR`: every page into DIR; exit code.
pub fn main(commands: &clap::Command, out: &Path) -> i32 {
    match write_pages(commands, out, out) {
        Ok(pages) => {
            println!("wrote {} manual pages into {}", pages.len(), out.display());
            0
        }
        Err(e) => {
            eprintln!("indimail man: {e}");
            111
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_tables_come_from_the_readme() {
        let t = section_tables("### Control files");
        assert!(!t.is_empty());
        assert!(t[0]
            .1
            .iter()
            .any(|r| r[0] == "`rcpthosts`, `morercpthosts`"));
        let page = String::from_utf8(control_page()).unwrap();
        assert!(page.contains("\\fBrcpthosts\\fR"), "{page}");
        assert!(page.contains(".SH \"ENVIRONMENT\""));
        assert!(page.contains("\\fBRELAYCLIENT\\fR"));
        assert_eq!(roff_escape(".x"), "\\&.x");
    }
}

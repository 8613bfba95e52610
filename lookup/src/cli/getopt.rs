//! IndiMail's getopt-style command lines: option letters, values and operands.

use super::CliError;

/// A minimal POSIX getopt: `spec` lists option letters, a `:` after one means it takes a
/// value. Returns the options in order and the operands.
/// Options in order (letter, value) and operands.
pub(super) type Parsed = (Vec<(char, String)>, Vec<String>);

pub(super) fn getopt(args: &[String], spec: &str) -> Result<Parsed, CliError> {
    let mut opts = Vec::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            rest.extend(args[i + 1..].iter().cloned());
            break;
        }
        if !a.starts_with('-') || a.len() == 1 {
            rest.push(a.clone());
            i += 1;
            continue;
        }
        let chars: Vec<char> = a[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            let Some(pos) = spec.find(c) else {
                return Err(CliError::Usage(format!("unknown option -{c}")));
            };
            if spec[pos + c.len_utf8()..].starts_with(':') {
                let val: String = chars[j + 1..].iter().collect();
                let val = if !val.is_empty() {
                    val
                } else {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| CliError::Usage(format!("option -{c} needs a value")))?
                };
                opts.push((c, val));
                break;
            }
            opts.push((c, String::new()));
            j += 1;
        }
        i += 1;
    }
    Ok((opts, rest))
}

pub(super) fn operand(rest: &[String], i: usize, what: &str) -> Result<String, CliError> {
    rest.get(i)
        .cloned()
        .ok_or_else(|| CliError::Usage(format!("missing {what}")))
}

/// The last value given to option `c`.
pub(super) fn opt_value(opts: &[(char, String)], c: char) -> Option<String> {
    opts.iter().rfind(|(o, _)| *o == c).map(|(_, v)| v.clone())
}

/// A program name this crate does not implement.
pub(super) fn unknown_program(name: &str) -> CliError {
    CliError::Usage(format!("unknown program {name}"))
}

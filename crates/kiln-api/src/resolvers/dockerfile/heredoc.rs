//! Heredocs in RUN (`RUN <<EOF`, `RUN cat <<A > /a && cat <<-'B' > /b`),
//! which parse-dockerfile reads only when a single one starts the command.
//! Before parsing, each RUN with heredocs becomes `RUN [flags] <marker>`
//! followed by blank lines (so that line numbers stay), and its script is
//! kept here. As in BuildKit, a RUN that is only a heredoc runs its body (a
//! `#!` body with its interpreter), and any other is given to the shell
//! whole, heredocs included, for the shell to read.

use std::collections::HashMap;

/// The RUN scripts taken out of a Dockerfile, by marker.
#[derive(Debug, Default)]
pub(super) struct Heredocs {
    scripts: HashMap<String, RunScript>,
}

/// One RUN with heredocs.
#[derive(Debug, PartialEq)]
pub(super) struct RunScript {
    /// The command line after the flags, continuations joined.
    command: String,
    /// The heredocs, in order.
    docs: Vec<Doc>,
}

/// One heredoc of a RUN.
#[derive(Debug, PartialEq)]
struct Doc {
    /// Its body, with leading tabs removed for `<<-`.
    body: String,
    /// Its lines as written, the delimiter line included.
    raw: String,
}

/// A heredoc opener found in a command: `<<[-]['"]NAME['"]`.
#[derive(Debug, PartialEq)]
pub(super) struct Opener {
    pub name: String,
    pub strip_tabs: bool,
}

impl Heredocs {
    /// The script a RUN command (as parse-dockerfile read it) stands for.
    pub fn get(&self, command: &str) -> Option<&RunScript> {
        self.scripts.get(command.trim())
    }
}

impl RunScript {
    /// The process to run through `shell`, and what it reads on stdin.
    pub fn process(&self, shell: &[String]) -> (Vec<String>, Option<String>) {
        let only_a_heredoc = self.docs.len() == 1 && openers(&self.command).len() == 1 && {
            let word = self.command.trim();
            word.starts_with("<<") && !word.contains(char::is_whitespace)
        };
        if only_a_heredoc {
            let body = &self.docs[0].body;
            if let Some(interpreter) = body.strip_prefix("#!").and_then(|b| b.lines().next()) {
                let argv = interpreter.split_whitespace().map(str::to_string);
                return (argv.chain(["/dev/stdin".to_string()]).collect(), Some(body.clone()));
            }
            return (shell.iter().cloned().chain([body.clone()]).collect(), None);
        }
        let mut script = self.command.clone();
        script.push('\n');
        for doc in &self.docs {
            script.push_str(&doc.raw);
        }
        (shell.iter().cloned().chain([script]).collect(), None)
    }
}

/// The heredoc openers in `command`, outside quotes, in order (`<<<` is a
/// here-string, not one).
pub(super) fn openers(command: &str) -> Vec<Opener> {
    let bytes = command.as_bytes();
    let (mut found, mut quote, mut i) = (Vec::new(), None, 0);
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\\' => i += 1,
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if command[i..].starts_with("<<<") => i += 2,
            None if command[i..].starts_with("<<") => {
                i += 2;
                let strip_tabs = bytes.get(i) == Some(&b'-');
                i += usize::from(strip_tabs);
                let open = bytes.get(i).copied().filter(|c| *c == b'\'' || *c == b'"');
                i += usize::from(open.is_some());
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
                {
                    i += 1;
                }
                if i > start {
                    found.push(Opener {
                        name: command[start..i].to_string(),
                        strip_tabs,
                    });
                }
                if open.is_some() && bytes.get(i) == open.as_ref() {
                    i += 1;
                }
                continue;
            }
            None => {}
        }
        i += 1;
    }
    found
}

/// `text` with each RUN that has heredocs replaced as the module says, and
/// those RUNs' scripts; or the line and reason of a heredoc that does not end.
pub(super) fn extract(text: &str) -> Result<(String, Heredocs), (usize, String)> {
    let escape = escape_char(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = String::with_capacity(text.len());
    let mut heredocs = Heredocs::default();
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        if !is_run(lines[i]) {
            out.push_str(lines[i]);
            i += 1;
            continue;
        }
        // The logical line: continuations joined.
        let mut logical = String::new();
        while i < lines.len() {
            let line = lines[i].trim_end_matches(['\n', '\r']);
            i += 1;
            match line.trim_end().strip_suffix(escape) {
                Some(joined) => logical.push_str(joined),
                None => {
                    logical.push_str(line);
                    break;
                }
            }
        }
        let rest = logical.trim_start()[3..].trim_start();
        let flags_end = flags_length(rest);
        let (flags, command) = (rest[..flags_end].trim_end(), rest[flags_end..].trim());
        let found = openers(command);
        if found.is_empty() {
            lines[start..i].iter().for_each(|l| out.push_str(l));
            continue;
        }
        let mut docs = Vec::new();
        for opener in &found {
            let (mut body, mut raw) = (String::new(), String::new());
            loop {
                let Some(line) = lines.get(i) else {
                    return Err((
                        start + 1,
                        format!("heredoc <<{} does not end (no line {0} after it)", opener.name),
                    ));
                };
                i += 1;
                raw.push_str(line);
                let content = line.trim_end_matches(['\n', '\r']);
                let content = if opener.strip_tabs {
                    content.trim_start_matches('\t')
                } else {
                    content
                };
                if content == opener.name {
                    break;
                }
                body.push_str(content);
                body.push('\n');
            }
            docs.push(Doc { body, raw });
        }
        let marker = format!("__kiln_heredoc_{}__", heredocs.scripts.len());
        match flags {
            "" => out.push_str(&format!("RUN {marker}\n")),
            flags => out.push_str(&format!("RUN {flags} {marker}\n")),
        }
        out.extend(std::iter::repeat_n("\n", i - start - 1));
        heredocs.scripts.insert(
            marker,
            RunScript {
                command: command.to_string(),
                docs,
            },
        );
    }
    Ok((out, heredocs))
}

/// Whether a line starts a RUN instruction.
fn is_run(line: &str) -> bool {
    let line = line.trim_start();
    line.get(..3).is_some_and(|w| w.eq_ignore_ascii_case("run")) && line[3..].starts_with([' ', '\t'])
}

/// The length of the `--flag[=value]` words that start `rest`.
fn flags_length(rest: &str) -> usize {
    let mut at = 0;
    while rest[at..].starts_with("--") {
        let end = rest[at..].find(char::is_whitespace).map_or(rest.len(), |e| at + e);
        at = end + rest[end..].len() - rest[end..].trim_start().len();
    }
    at
}

/// The escape character the `# escape=` parser directive sets (`\` unless).
fn escape_char(text: &str) -> char {
    for line in text.lines() {
        let Some(directive) = line.trim().strip_prefix('#') else {
            break;
        };
        if let Some((key, value)) = directive.split_once('=')
            && key.trim().eq_ignore_ascii_case("escape")
            && let Some(c) = value.trim().chars().next()
        {
            return c;
        }
    }
    '\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into()]
    }

    #[test]
    fn openers_are_found_outside_quotes_only() {
        let found = openers(r#"cat <<A > /a && cat <<-'B' > /b; echo "<<C" '<<D' \<<E; cat <<<F; x<<"G""#);
        let names: Vec<_> = found.iter().map(|o| (o.name.as_str(), o.strip_tabs)).collect();
        assert_eq!(names, [("A", false), ("B", true), ("G", false)]);
    }

    #[test]
    fn a_run_with_heredocs_becomes_a_marker_and_keeps_its_lines() {
        let text = "FROM busybox\nRUN --mount=type=cache,target=/c cat <<A > /a && \\\n  cat <<-'B' > /b\n\
                    one $HOME\nA\n\t\ttwo\n\tB\nRUN echo plain\n";
        let (out, heredocs) = extract(text).unwrap();
        assert_eq!(
            out,
            "FROM busybox\nRUN --mount=type=cache,target=/c __kiln_heredoc_0__\n\n\n\n\n\nRUN echo plain\n"
        );
        assert_eq!(out.lines().count(), text.lines().count());
        let script = heredocs.get(" __kiln_heredoc_0__").unwrap();
        let (argv, stdin) = script.process(&sh());
        assert_eq!(
            argv[2], "cat <<A > /a &&   cat <<-'B' > /b\none $HOME\nA\n\t\ttwo\n\tB\n",
            "the shell reads the heredocs itself"
        );
        assert_eq!(stdin, None);
    }

    #[test]
    fn a_run_that_is_only_a_heredoc_runs_its_body() {
        let (_, heredocs) = extract("RUN <<EOF\necho one\necho two\nEOF\n").unwrap();
        let (argv, stdin) = heredocs.get("__kiln_heredoc_0__").unwrap().process(&sh());
        assert_eq!(argv, ["/bin/sh", "-c", "echo one\necho two\n"]);
        assert_eq!(stdin, None);

        let (_, heredocs) = extract("RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n").unwrap();
        let (argv, stdin) = heredocs.get("__kiln_heredoc_0__").unwrap().process(&sh());
        assert_eq!(argv, ["/usr/bin/env", "python3", "/dev/stdin"]);
        assert_eq!(stdin.as_deref(), Some("#!/usr/bin/env python3\nprint(1)\n"));
    }

    #[test]
    fn an_unterminated_heredoc_names_its_line_and_the_escape_directive_is_honoured() {
        let err = extract("FROM busybox\nRUN cat <<EOF\nnever ends\n").unwrap_err();
        assert_eq!(
            err,
            (2, "heredoc <<EOF does not end (no line EOF after it)".to_string())
        );
        let (out, heredocs) = extract("# escape=`\nFROM busybox\nRUN cat <<X `\n  > /x\nbody\nX\n").unwrap();
        assert_eq!(out.lines().count(), 6);
        let (argv, _) = heredocs.get("__kiln_heredoc_0__").unwrap().process(&sh());
        assert_eq!(argv[2], "cat <<X   > /x\nbody\nX\n");
    }
}

//! `--text-template "{title}\n\n{text}"`: the text embedded for a row, built from several of its
//! columns. Records are rarely one column (a product has a title and a description, a ticket a
//! subject and a body), and embedding them together is what retrieval wants. `--text-column NAME`
//! is the template `{NAME}`.
//!
//! A template is literal text with `{column}` placeholders; `{{` and `}}` stand for literal braces,
//! and `\n`, `\t`, `\r` and `\\` for a newline, a tab, a carriage return and a backslash (a shell's
//! double quotes pass `"{title}\n\n{text}"` on as written, and that is what users type).
//! A null column becomes the empty string; a row whose every named column is null has no text (it
//! is a failure, "text is null", as a null text column is without a template). This module only
//! parses and renders; input.rs checks the columns against each file and reads only those.

use std::fmt;

use anyhow::{bail, Result};

/// A parsed `--text-template`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// As the user wrote it (kept for the run description and messages).
    source: String,
    parts: Vec<Part>,
    /// The columns it names, each once, in order of first use.
    columns: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// Index into `columns`.
    Column(usize),
}

impl Template {
    /// Parses a template: literal text, `{column}` placeholders, `{{` / `}}` for braces, `\n`
    /// `\t` `\r` `\\` escapes (any other backslash is kept as it is).
    pub fn parse(source: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut columns: Vec<String> = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '\\' => match chars.peek().map(|&(_, n)| n) {
                    Some(e @ ('n' | 't' | 'r' | '\\')) => {
                        chars.next();
                        literal.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            _ => '\\',
                        });
                    }
                    _ => literal.push('\\'),
                },
                '}' => bail!(
                    "--text-template {source:?}: a '}}' at byte {at} closes no placeholder (write '}}}}' for a literal brace)"
                ),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((inner, '{')) => bail!(
                                "--text-template {source:?}: a '{{' at byte {inner} inside the placeholder opened at byte {at} (write '{{{{' for a literal brace)"
                            ),
                            Some((_, ch)) => name.push(ch),
                            None => bail!(
                                "--text-template {source:?}: the placeholder opened at byte {at} is never closed with '}}' (write '{{{{' for a literal brace)"
                            ),
                        }
                    }
                    if name.is_empty() {
                        bail!("--text-template {source:?}: an empty placeholder '{{}}' at byte {at}; name a column, e.g. {{text}}");
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    let index = match columns.iter().position(|c| *c == name) {
                        Some(i) => i,
                        None => {
                            columns.push(name);
                            columns.len() - 1
                        }
                    };
                    parts.push(Part::Column(index));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if columns.is_empty() {
            bail!("--text-template {source:?} names no column; use {{column}} placeholders, e.g. \"{{title}}\\n\\n{{text}}\"");
        }
        Ok(Template { source: source.to_string(), parts, columns })
    }

    /// The template `{name}`: what `--text-column NAME` means.
    pub fn column(name: &str) -> Self {
        Template {
            source: format!("{{{name}}}"),
            parts: vec![Part::Column(0)],
            columns: vec![name.to_string()],
        }
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The columns it reads, each once, in order of first use.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// `Some(column)` when the text is that one column as it is (no literal text around it):
    /// the reader then hands the column over without building new strings.
    pub fn single_column(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Column(0)] => Some(&self.columns[0]),
            _ => None,
        }
    }

    /// Renders one row into `out` (cleared first) from its values of [`Template::columns`], in
    /// that order (`None` for a null). Returns false, leaving `out` empty, when every value is
    /// null: the row has no text.
    pub fn render_into(&self, values: &[Option<&str>], out: &mut String) -> bool {
        debug_assert_eq!(values.len(), self.columns.len());
        out.clear();
        if values.iter().all(Option::is_none) {
            return false;
        }
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Column(i) => out.push_str(values[*i].unwrap_or("")),
            }
        }
        true
    }

    /// [`Template::render_into`] into a new string (`None` when every value is null).
    pub fn render(&self, values: &[Option<&str>]) -> Option<String> {
        let mut out = String::new();
        self.render_into(values, &mut out).then_some(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_escaped_braces() {
        let t = Template::parse("{title}\n\n{text} {{json}} {title}").unwrap();
        assert_eq!(t.columns(), ["title", "text"]);
        assert_eq!(t.single_column(), None);
        assert_eq!(t.render(&[Some("Dune"), Some("A desert.")]).unwrap(), "Dune\n\nA desert. {json} Dune");
        // A null column is empty; all null is no text.
        assert_eq!(t.render(&[None, Some("body")]).unwrap(), "\n\nbody {json} ");
        assert_eq!(t.render(&[None, None]), None);
        assert_eq!(t.render(&[Some(""), None]).unwrap(), "\n\n {json} ", "an empty string is not null");
        // Escapes, as a shell passes them on; other backslashes stay.
        let t = Template::parse(r"{a}\n\n{b}\t\\n \d").unwrap();
        assert_eq!(t.render(&[Some("x"), Some("y")]).unwrap(), "x\n\ny\t\\n \\d");
        // Any character in a name, as Parquet allows.
        let t = Template::parse("Q: {question text}|{ö-1}").unwrap();
        assert_eq!(t.columns(), ["question text", "ö-1"]);
        assert_eq!(t.render(&[Some("a"), Some("b")]).unwrap(), "Q: a|b");
    }

    #[test]
    fn a_text_column_is_the_template_of_that_one_column() {
        let t = Template::column("review");
        assert_eq!(t, Template::parse("{review}").unwrap());
        assert_eq!(t.single_column(), Some("review"));
        assert_eq!(t.source(), "{review}");
        assert_eq!(t.render(&[None]), None);
    }

    #[test]
    fn bad_templates_say_what_is_wrong_and_where() {
        for (bad, says) in [
            ("{title", "never closed"),
            ("title}", "closes no placeholder"),
            ("{a{b}}", "inside the placeholder"),
            ("x {} y", "empty placeholder"),
            ("no columns here", "names no column"),
            ("{{escaped only}}", "names no column"),
        ] {
            let err = Template::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains("--text-template"), "{bad:?}: {err}");
        }
        let err = Template::parse("ab}").unwrap_err().to_string();
        assert!(err.contains("byte 2"), "{err}");
    }
}

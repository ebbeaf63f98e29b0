//! The fleet launch files in examples/ (SkyPilot, Kubernetes, Slurm): parsed, and checked for
//! what decides whether a many-worker run comes out right: every worker gets its own identity
//! but the same `--output`, a preempted or interrupted worker (exit 75) is restarted without
//! counting as a failure, and nothing passes `--restart`. SkyPilot and Kubernetes come in two
//! variants each: buckets read and written directly, and buckets or claims mounted. The two shell
//! scripts are also run against stub `sky`, `scontrol` and `batch-embed` commands.

#![cfg(unix)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use yaml_rust2::{Yaml, YamlLoader};

mod kubernetes;
mod skypilot;
mod slurm;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn read(rel: &str) -> String {
    let path = examples().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

fn yaml_doc(rel: &str) -> Yaml {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel} should hold one YAML document");
    docs.remove(0)
}

/// `y` at a path of mapping keys and sequence indices (all-digit segments); panics naming the
/// path when something is missing, so a failing check says which field.
fn at<'a>(y: &'a Yaml, path: &[&str]) -> &'a Yaml {
    let mut cur = y;
    for (i, key) in path.iter().enumerate() {
        cur = match key.parse::<usize>() {
            Ok(index) => &cur[index],
            Err(_) => &cur[*key],
        };
        assert!(!cur.is_badvalue(), "missing field {}", path[..=i].join("."));
    }
    cur
}

fn str_at<'a>(y: &'a Yaml, path: &[&str]) -> &'a str {
    at(y, path).as_str().unwrap_or_else(|| panic!("{} should be a string", path.join(".")))
}

fn int_at(y: &Yaml, path: &[&str]) -> i64 {
    at(y, path).as_i64().unwrap_or_else(|| panic!("{} should be an integer", path.join(".")))
}

fn vec_at<'a>(y: &'a Yaml, path: &[&str]) -> &'a Vec<Yaml> {
    at(y, path).as_vec().unwrap_or_else(|| panic!("{} should be a list", path.join(".")))
}

/// A scalar as text, whatever YAML type it was read as (`"8"` and `8` both give "8").
fn scalar_text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading shell: enough of it for the scripts here.

/// The simple commands of a shell script, as words: continuation lines joined, comments and
/// here-documents dropped, quotes removed (variables stay as written), split at newlines and at
/// `;`, `&`, `|`. `$(...)` is kept whole inside its word.
fn shell_commands(script: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = script.chars().collect();
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut heredoc: Option<String> = None;
    let mut i = 0;

    fn end_word(words: &mut Vec<String>, word: &mut String, in_word: &mut bool) {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    }
    fn end_command(commands: &mut Vec<Vec<String>>, words: &mut Vec<String>) {
        if !words.is_empty() {
            commands.push(std::mem::take(words));
        }
    }

    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if chars.get(i + 1) == Some(&'\n') => i += 2,
            '\\' => {
                if let Some(&next) = chars.get(i + 1) {
                    word.push(next);
                }
                in_word = true;
                i += 2;
            }
            '\'' => {
                let close = chars[i + 1..].iter().position(|&ch| ch == '\'').expect("unclosed ' quote");
                word.extend(&chars[i + 1..i + 1 + close]);
                in_word = true;
                i += close + 2;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && matches!(chars.get(i + 1), Some('"' | '\\' | '$' | '`')) {
                        i += 1;
                    }
                    word.push(chars[i]);
                    i += 1;
                }
                assert!(i < chars.len(), "unclosed \" quote");
                in_word = true;
                i += 1;
            }
            '$' if chars.get(i + 1) == Some(&'(') => {
                let mut depth = 0;
                while i < chars.len() {
                    word.push(chars[i]);
                    match chars[i] {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    i += 1;
                    if depth == 0 && chars[i - 1] == ')' {
                        break;
                    }
                }
                in_word = true;
            }
            '#' if !in_word => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ' ' | '\t' => {
                end_word(&mut words, &mut word, &mut in_word);
                i += 1;
            }
            '\n' | ';' | '&' | '|' => {
                end_word(&mut words, &mut word, &mut in_word);
                if let Some(w) = words.iter().find(|w| w.starts_with("<<")) {
                    let delim = w.trim_start_matches("<<").trim_start_matches('-').to_string();
                    heredoc = Some(delim);
                }
                end_command(&mut commands, &mut words);
                i += 1;
                if c == '\n' {
                    if let Some(delim) = heredoc.take() {
                        // Skip the here-document's lines, up to and including the delimiter.
                        loop {
                            let end =
                                chars[i..].iter().position(|&ch| ch == '\n').map_or(chars.len(), |p| i + p);
                            let line: String = chars[i..end].iter().collect();
                            i = end + 1;
                            if line.trim() == delim || i >= chars.len() {
                                break;
                            }
                        }
                    }
                }
            }
            _ => {
                word.push(c);
                in_word = true;
                i += 1;
            }
        }
    }
    end_word(&mut words, &mut word, &mut in_word);
    end_command(&mut commands, &mut words);
    commands
}

/// Expands `$NAME`, `${NAME}` and `${NAME:-default}` from `vars`; unknown names stay as written
/// (a `:-` default is used instead where there is one).
fn expand(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(inner) = after.strip_prefix('{') {
            let close = inner.find('}').expect("unclosed ${");
            let body = &inner[..close];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            match (vars.get(name), default) {
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(&expand(d, vars)),
                (None, None) => out.push_str(&rest[pos..pos + 3 + close]),
            }
            rest = &inner[close + 1..];
        } else {
            let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            match vars.get(&after[..len]) {
                Some(v) if len > 0 => out.push_str(v),
                _ => out.push_str(&rest[pos..pos + 1 + len]),
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    out
}

/// The script's commands with its own plain assignments (`NAME=value`, in order) expanded.
fn expanded_commands(script: &str) -> Vec<Vec<String>> {
    let mut vars = HashMap::new();
    let mut out = Vec::new();
    for cmd in shell_commands(script) {
        let cmd: Vec<String> = cmd.iter().map(|w| expand(w, &vars)).collect();
        if let [only] = cmd.as_slice() {
            if let Some((name, value)) = only.split_once('=') {
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    vars.insert(name.to_string(), value.to_string());
                }
            }
        }
        out.push(cmd);
    }
    out
}

/// Flags of `batch-embed embed` that take no value.
const SWITCHES: &[&str] = &["--restart", "--no-normalize", "--quiet", "-q"];

/// The arguments after `embed` of a `batch-embed embed` command.
#[derive(Debug)]
struct EmbedArgs(Vec<String>);

impl EmbedArgs {
    /// Finds the one `… batch-embed embed …` command among `commands`.
    fn find(commands: &[Vec<String>], what: &str) -> EmbedArgs {
        let found: Vec<EmbedArgs> = commands
            .iter()
            .filter_map(|cmd| {
                let pos = cmd.windows(2).position(|w| w[0].ends_with("batch-embed") && w[1] == "embed")?;
                Some(EmbedArgs(cmd[pos + 2..].to_vec()))
            })
            .collect();
        match <[EmbedArgs; 1]>::try_from(found) {
            Ok([args]) => args,
            Err(found) => panic!("{what}: expected one `batch-embed embed` command, found {found:?}"),
        }
    }

    fn from_script(script: &str, what: &str) -> EmbedArgs {
        EmbedArgs::find(&expanded_commands(script), what)
    }

    /// Every value given to `flag`, as `--flag V` or `--flag=V`.
    fn values(&self, flag: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut it = self.0.iter();
        while let Some(a) = it.next() {
            if a == flag {
                out.push(it.next().map_or("", String::as_str));
            } else if let Some(v) = a.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')) {
                out.push(v);
            }
        }
        out
    }

    /// The one value of `flag`; panics when it is missing or given twice.
    fn value(&self, flag: &str) -> &str {
        match self.values(flag).as_slice() {
            [v] => v,
            other => panic!("expected {flag} once in {:?}, found {other:?}", self.0),
        }
    }

    fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    }

    /// The inputs: words that are neither flags nor a flag's value.
    fn inputs(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut it = self.0.iter();
        while let Some(a) = it.next() {
            if a.starts_with('-') {
                if !a.contains('=') && !SWITCHES.contains(&a.as_str()) {
                    it.next();
                }
            } else {
                out.push(a.as_str());
            }
        }
        out
    }
}

/// What every example must get right about the one command all its workers run.
fn check_embed_args(args: &EmbedArgs) -> Result<(), String> {
    if args.has("--restart") {
        return Err("passes --restart: a rerun would throw away finished work instead of resuming".into());
    }
    let outputs = args.values("--output");
    let [output] = outputs.as_slice() else {
        return Err(format!("needs --output exactly once, has {outputs:?}"));
    };
    // One literal path or bucket URL for every worker: a variable left in it (a worker id, a
    // node rank, ...) would scatter the workers over different folders.
    let fixed = output.starts_with('/') || is_bucket_url(output);
    if !fixed || output.contains(['$', '%', '{', '`']) {
        return Err(format!(
            "--output {output:?} is not one fixed absolute path or bucket URL shared by all workers"
        ));
    }
    if args.values("--model").len() != 1 {
        return Err("needs --model exactly once".into());
    }
    if args.inputs().is_empty() {
        return Err("names no input".into());
    }
    Ok(())
}

/// A URL batch-embed reads and writes itself.
fn is_bucket_url(s: &str) -> bool {
    ["s3://", "gs://", "az://"].iter().any(|p| s.strip_prefix(p).is_some_and(|rest| rest.len() > 1))
}

fn assert_embed_args(args: &EmbedArgs, what: &str) {
    if let Err(e) = check_embed_args(args) {
        panic!("{what}: the embed command {e}: {:?}", args.0);
    }
}

#[test]
fn shell_reader_finds_the_embed_command_and_the_checks_can_fail() {
    let script = "#!/bin/bash\nOUT=/data/out  # where\nBIN=${BIN:-/opt/batch-embed}\n\
                  cat <<EOF\nnot a 'command\nEOF\n\"$BIN\" embed --model /m \\\n  --output \"$OUT\" --restart /in &\n";
    let args = EmbedArgs::from_script(script, "sample");
    assert_eq!(args.0, ["--model", "/m", "--output", "/data/out", "--restart", "/in"]);
    assert_eq!(args.inputs(), ["/in"]);
    assert!(check_embed_args(&args).unwrap_err().contains("--restart"));

    for bad_output in ["/data/out/$WORKER_ID", "out", "/data/${SLURM_ARRAY_TASK_ID}", "/logs/%a"] {
        let args = EmbedArgs(vec![
            "--model".into(),
            "/m".into(),
            "--output".into(),
            bad_output.into(),
            "/in".into(),
        ]);
        assert!(check_embed_args(&args).is_err(), "{bad_output} should be refused");
    }
    let good = EmbedArgs(vec!["--model=/m".into(), "--output=/data/out".into(), "/in".into()]);
    assert_eq!(check_embed_args(&good), Ok(()));
    let bucket = EmbedArgs(vec!["--model=/m".into(), "--output=s3://b/out".into(), "s3://b/in".into()]);
    assert_eq!(check_embed_args(&bucket), Ok(()));
    for bad_output in ["s3://b/out-$WORKER_ID", "s3://", "http://b/out"] {
        let args = EmbedArgs(vec!["--model=/m".into(), format!("--output={bad_output}"), "/in".into()]);
        assert!(check_embed_args(&args).is_err(), "{bad_output} should be refused");
    }
}

fn bash_syntax_ok(rel: &str) {
    let out = Command::new("bash").arg("-n").arg(examples().join(rel)).output().expect("bash runs");
    assert!(out.status.success(), "bash -n {rel}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes an executable bash script (the stub commands the launch scripts are run against).
fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/usr/bin/env bash\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `PATH` with `dir` first, so the stubs there are found before anything installed.
fn path_with(dir: &Path) -> String {
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

//! Finding the input files: files named on the command line, folders searched recursively for
//! `*.parquet`, bucket prefixes listed recursively; inside a folder or prefix, what folder
//! readers (Spark, pyarrow datasets) leave out is left out too.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::storage::object::ObjectLocation;
use crate::storage::Location;

/// The input files found, the `*.parquet` files left out as hidden, and the Delta Lake tables met.
#[derive(Default)]
pub struct Discovered {
    /// Sorted, de-duplicated.
    pub files: Vec<Location>,
    /// Files in a folder or with a name starting with `.` or `_`, found while searching a folder
    /// or prefix: Spark's `_temporary` attempts, Delta Lake's `_delta_log` checkpoints, editors'
    /// and uploaders' dot files. A file named on the command line is always taken.
    pub hidden: Vec<String>,
    /// Folders holding a `_delta_log`: Delta Lake tables, whose folder keeps the files of older
    /// versions (until a VACUUM) beside the current ones.
    pub delta_tables: Vec<String>,
}

/// Expands files and folders into a sorted, de-duplicated list of files. On a bucket, a URL
/// naming an object is that file, and any other URL is a prefix listed recursively.
pub fn discover(inputs: &[Location]) -> Result<Discovered> {
    let mut found = Discovered::default();
    for input in inputs {
        match input {
            Location::Local(dir) if dir.is_dir() => {
                found.walk(dir, &mut Vec::new()).with_context(|| format!("cannot list {}", dir.display()))?
            }
            Location::Local(file) if file.is_file() => found.files.push(input.clone()),
            Location::Local(missing) => bail!("input {} does not exist", missing.display()),
            Location::Object(o) if !o.is_root() && o.size()?.is_some() => found.files.push(input.clone()),
            Location::Object(prefix) => found.list(prefix)?,
        }
    }
    found.files.sort();
    found.files.dedup();
    found.hidden.sort();
    found.delta_tables.sort();
    found.delta_tables.dedup();
    if found.files.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        let also = match found.hidden.len() {
            0 => String::new(),
            n => format!(" ({n} left out as hidden, their names or folders starting with '.' or '_')"),
        };
        bail!("no Parquet files (*.parquet) found in {}{also}", names.join(", "));
    }
    Ok(found)
}

/// A file or folder name that folder readers leave out.
fn is_hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

impl Discovered {
    /// Searches `dir`; `above` are the folders it is in (canonical), so that a link back to one
    /// of them is not followed round and round.
    fn walk(&mut self, dir: &Path, above: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let here = dir.canonicalize()?;
        if above.contains(&here) {
            return Ok(());
        }
        above.push(here);
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let hide = is_hidden(&name.to_string_lossy());
            if path.is_dir() {
                if name == "_delta_log" {
                    self.delta_tables.push(dir.display().to_string());
                }
                match hide {
                    true => {
                        let mut inside = Discovered::default();
                        inside.walk(&path, above)?;
                        let files = inside.files.iter().map(|f| f.display().to_string());
                        self.hidden.extend(inside.hidden.into_iter().chain(files));
                    }
                    false => self.walk(&path, above)?,
                }
            } else if path.extension().is_some_and(|e| e == "parquet") {
                match hide {
                    true => self.hidden.push(path.display().to_string()),
                    false => self.files.push(Location::Local(path)),
                }
            }
        }
        above.pop();
        Ok(())
    }

    fn list(&mut self, prefix: &ObjectLocation) -> Result<()> {
        for (object, _) in prefix.list_all()? {
            let below = object.key().strip_prefix(prefix.key()).unwrap_or(object.key());
            let parts: Vec<&str> = below.split('/').filter(|p| !p.is_empty()).collect();
            if let Some(at) = parts.iter().position(|p| *p == "_delta_log") {
                self.delta_tables.push(match at {
                    0 => prefix.url(),
                    _ => format!("{}/{}", prefix.url().trim_end_matches('/'), parts[..at].join("/")),
                });
            }
            if !object.name().ends_with(".parquet") {
                continue;
            }
            match parts.iter().any(|p| is_hidden(p)) {
                true => self.hidden.push(object.url()),
                false => self.files.push(Location::Object(object)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_back_to_a_folder_above_is_not_followed_round() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("2024")).unwrap();
        std::fs::write(data.join("2024/a.parquet"), b"").unwrap();
        std::os::unix::fs::symlink(&data, data.join("2024/loop")).unwrap();
        let found = discover(&[Location::Local(data.clone())]).unwrap();
        let files: Vec<String> = found.files.iter().map(|f| f.display().to_string()).collect();
        assert_eq!(files, [data.join("2024/a.parquet").display().to_string()]);
    }
}

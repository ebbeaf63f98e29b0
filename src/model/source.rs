//! `--model` as users give it: a local folder, or a Hugging Face Hub id `ORG/NAME` with an
//! optional `@REVISION` (or `--revision`), made into the local folder the model is read from.
//!
//! What a run records must be the same on every machine that shares it, whatever its cache
//! path: the Hub id and the resolved commit are (and go into the run's description); the local
//! folder is not (it goes into the part files' metadata only). A folder given by path that is a
//! snapshot of the Hugging Face cache is recognised as its Hub id and commit, so a worker given
//! the path and one given the id describe the same run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::hub::{self, HubEnv};

/// Where a model's files are, and which Hub model they are when they come from the Hub.
#[derive(Clone, Debug)]
pub struct ModelSource {
    /// The local folder the model is read from (a cache snapshot for a Hub model).
    pub dir: PathBuf,
    /// The Hub id and the commit the files are from.
    pub hub: Option<HubModel>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubModel {
    pub id: String,
    /// The commit id (40 hex digits) the revision resolved to.
    pub commit: String,
}

/// A Hub id as the Hub spells them: `ORG/NAME`, letters, digits, `-`, `_`, `.`.
fn hub_id(s: &str) -> Option<(&str, Option<&str>)> {
    let (id, revision) = match s.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, Some(rev)),
        Some(_) => return None,
        None => (s, None),
    };
    let (org, name) = id.split_once('/')?;
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with(['.', '-'])
            && !p.contains("..")
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    (part(org) && part(name)).then_some((id, revision))
}

/// Resolves `--model` (and `--revision`) to a local folder: an existing folder as it is, else a
/// Hub id through the Hugging Face cache (downloading what it lacks unless offline).
pub fn resolve(
    model: &Path,
    revision: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    note: &mut dyn FnMut(&str),
) -> Result<ModelSource> {
    if model.is_dir() {
        if let Some(rev) = revision {
            bail!("--revision {rev} applies to a Hub id, but --model {} is a local folder", model.display());
        }
        let hub = hub::id_of_snapshot_dir(model).map(|(id, commit)| HubModel { id, commit });
        return Ok(ModelSource { dir: model.to_path_buf(), hub });
    }
    let text = model.to_string_lossy();
    let Some((id, at_revision)) = hub_id(&text) else {
        bail!(
            "model directory {} does not exist or is not a directory (nor is it a Hub id like BAAI/bge-small-en-v1.5)",
            model.display()
        );
    };
    let revision = match (at_revision, revision) {
        (Some(a), Some(b)) if a != b => bail!("--model {text} names revision {a}, but --revision says {b}"),
        (a, b) => a.or(b).unwrap_or("main"),
    };
    let hub_env = HubEnv::from_env(env);
    let snapshot = hub::resolve(&hub_env, id, revision, note)?;
    Ok(ModelSource { dir: snapshot.dir, hub: Some(HubModel { id: id.to_string(), commit: snapshot.commit }) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_hub_ids_from_paths() {
        assert_eq!(hub_id("BAAI/bge-small-en-v1.5"), Some(("BAAI/bge-small-en-v1.5", None)));
        assert_eq!(hub_id("intfloat/e5-base@v2.0"), Some(("intfloat/e5-base", Some("v2.0"))));
        for not_an_id in ["models", "./models/x", "/abs/path", "a/b/c", "a/", "/b", "a/../b", "a/b@", "~/m/x"]
        {
            assert_eq!(hub_id(not_an_id), None, "{not_an_id}");
        }
    }

    #[test]
    fn a_missing_folder_that_is_no_hub_id_says_so() {
        let env = |_: &str| None;
        let err = resolve(Path::new("/no/such/model"), None, &env, &mut |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(dir.path(), Some("main"), &env, &mut |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("--revision main applies to a Hub id"), "{err:#}");
        let err = resolve(Path::new("org/name@v1"), Some("v2"), &env, &mut |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("but --revision says v2"), "{err:#}");
    }
}
